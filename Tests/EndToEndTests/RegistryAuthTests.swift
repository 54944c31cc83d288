import BuildAgent
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import RegistryAuth
import Testing

/// The registry with token authentication, the scheduler its token service: who may push and
/// pull what, tried the way a hostile build or a stranger on the machine would.
// Nested in the end-to-end suite, which runs one farm at a time.
extension EndToEndTests {
@Suite struct RegistryAuthTests {
    @Test("anonymous push and pull are refused; wrong credentials get 401; an agent pushes only its current builds' repositories; a deployer only pulls; admin logs in with podman and pulls")
    func registryAuthentication() async throws {
        try await withFarm { farm in
            try await farm.addProject()
            let built = try await farm.finished(try await farm.startBuild().id)
            let builtLog = try await farm.log(built.id)
            #expect(built.status == .succeeded, "\(built.error ?? "") \(builtLog)")
            let registry = farm.infra.registry.address
            let image = try #require(built.imageByDigest)
            let docker = DockerClient(socketPath: farm.infra.podman.socketPath)

            // 1. The registry itself asks for a token, naming the scheduler's realm.
            let anonymous = try await httpRequest(.GET, "http://\(registry)/v2/demo/tags/list")
            #expect(anonymous.status == 401)
            let challenge = try #require(anonymous.headers.first { $0.0.lowercased() == "www-authenticate" }?.1)
            #expect(challenge.contains("realm=\"\(farm.registryAuth.registry.realm)\""), "\(challenge)")

            // 2. The token service: no credentials, a wrong password, an unknown user: 401.
            let realm = farm.registryAuth.registry.realm + "?service=kiln-registry&scope=repository:demo:pull,push"
            #expect(try await httpRequest(.GET, realm).status == 401)
            let wrong = "not-\(Secret.random(bytes: 8))"
            for (user, password) in [("admin", wrong), ("agent-1", wrong), ("deployer", farm.admin.password), ("nobody", wrong), ("agent-1", farm.admin.password)] {
                let r = try await httpRequest(.GET, realm, headers: [("Authorization", basic(user, password))])
                #expect(r.status == 401, "\(user): \(r.status) \(r.body)")
                #expect(!r.body.contains(password), "the answer does not repeat the password")
            }

            // 3. Anonymous pull and push through the engine fail, and say so.
            _ = try? farm.podman(["rmi", "-f", image])
            await #expect(throws: DockerError.self) { try await docker.pull(image, insecure: true) }
            // A tiny image of one file to push (not the 500 MB build image).
            let tiny = farm.dataDir.appendingPathComponent("tiny")
            try FileManager.default.createDirectory(at: tiny, withIntermediateDirectories: true)
            try "pushed by a test\n".write(to: tiny.appendingPathComponent("hello.txt"), atomically: true, encoding: .utf8)
            _ = try run("/bin/tar", ["-C", tiny.path, "-cf", tiny.path + ".tar", "."])
            try farm.podman(["import", tiny.path + ".tar", "\(registry)/demo:anonymous"])
            let anonymousPush = await #expect(throws: DockerError.self) {
                _ = try await docker.push(image: "\(registry)/demo", tag: "anonymous", insecure: true) { _ in }
            }
            #expect(anonymousPush.map { "\($0)".contains("unauthorized") || "\($0)".contains("authentication required") } == true, "\(anonymousPush.map { "\($0)" } ?? "")")

            // 4. An agent with no build of demo assigned gets no access to demo (the build is
            //    over, so agent-1's task is gone), and no catalog.
            let agent1 = try #require(farm.registryAuth.machines["agent-1"])
            #expect(try await farm.grantedAccess(agent1, scopes: ["repository:demo:pull,push", "registry:catalog:*"]).isEmpty)
            // 4b. A task key the agent wrote itself (its etcd user may write its own tasks: it
            //     deletes them at a build's end) gives nothing without the dispatcher's grant.
            let forged = BuildTask(build: "forged", project: Project(name: "demo", repository: farm.infra.repositoryURL("demo"),
                                   buildImage: Infrastructure.buildImage, buildCommand: "true"), ref: "main",
                                   commit: nil, tag: nil, mvncache: false, attempt: 1)
            try await farm.etcd.put(farm.keys.task(agent: "agent-1", build: "forged"), try KilnJSON.encode(forged))
            #expect(try await farm.grantedAccess(agent1, scopes: ["repository:demo:pull,push"]).isEmpty)
            try await farm.etcd.delete(farm.keys.task(agent: "agent-1", build: "forged"))

            // 5. While agent-1 runs a build of project "evil", its credentials get push on evil
            //    only: its upload into demo fails, its own succeeds; once the build is over,
            //    nothing again.
            try await farm.addProject("evil", buildCommand: "echo awake-$((40+2)); sleep 300")
            let evilBuild = try await farm.startBuild("evil")
            try await farm.waitForLog(evilBuild.id, containing: "awake-42")
            #expect(try await farm.grantedAccess(agent1, scopes: ["repository:demo:pull,push"]).isEmpty)
            #expect(try await farm.grantedAccess(agent1, scopes: ["repository:evil:pull,push", "repository:demo:pull"]).map(\.description) == ["repository:evil:pull,push"])
            try farm.podman(["tag", "\(registry)/demo:anonymous", "\(registry)/demo:hostile"])
            await #expect(throws: DockerError.self, "an agent's upload into another project's repository") {
                _ = try await docker.push(image: "\(registry)/demo", tag: "hostile", insecure: true, credentials: agent1) { _ in }
            }
            // A raw upload with a token for its own repository is refused in demo's.
            let evilToken = try await farm.token(agent1, scopes: ["repository:evil:pull,push", "repository:demo:pull,push"])
            let upload = try await httpRequest(.POST, "http://\(registry)/v2/demo/blobs/uploads/", headers: [("Authorization", "Bearer \(evilToken)")])
            let uploadChallenge = upload.headers.first { $0.0.lowercased() == "www-authenticate" }?.1 ?? ""
            #expect(upload.status == 401 && uploadChallenge.contains("insufficient_scope"), "\(upload.status) \(uploadChallenge) \(upload.body)")
            try farm.podman(["tag", "\(registry)/demo:anonymous", "\(registry)/evil:own"])
            let pushed = try await docker.push(image: "\(registry)/evil", tag: "own", insecure: true, credentials: agent1) { _ in }
            #expect(pushed?.hasPrefix("sha256:") == true)
            #expect(try await farm.request(.POST, "/api/v1/builds/\(evilBuild.id)/cancel").status == 200)
            _ = try await farm.finished(evilBuild.id, timeout: .seconds(60))
            try await waitUntil(farm.etcd, prefix: farm.keys.tasks(of: "agent-1"), timeout: .seconds(30)) { $0.isEmpty }
            #expect(try await farm.grantedAccess(agent1, scopes: ["repository:evil:pull,push"]).isEmpty)

            // 6. The deployer pulls and cannot push.
            let deployer = try #require(farm.registryAuth.machines["deployer"])
            #expect(try await farm.grantedAccess(deployer, scopes: ["repository:demo:pull,push", "registry:catalog:*"]).map(\.description) == ["repository:demo:pull"])
            try await docker.pull(image, insecure: true, credentials: deployer)
            await #expect(throws: DockerError.self, "a deployer's push") {
                _ = try await docker.push(image: "\(registry)/demo", tag: "hostile", insecure: true, credentials: deployer) { _ in }
            }

            // 7. Nothing that was refused reached the registry.
            let catalogToken = try await farm.token(farm.admin, scopes: ["registry:catalog:*", "repository:demo:pull"])
            let catalog = try await httpRequest(.GET, "http://\(registry)/v2/_catalog", headers: [("Authorization", "Bearer \(catalogToken)")])
            #expect(catalog.status == 200 && catalog.body.contains("\"demo\"") && catalog.body.contains("\"evil\""), "\(catalog.body)")
            let tags = try await httpRequest(.GET, "http://\(registry)/v2/demo/tags/list", headers: [("Authorization", "Bearer \(catalogToken)")])
            #expect(tags.status == 200 && tags.body.contains(built.tag!), "\(tags.body)")
            #expect(!tags.body.contains("hostile") && !tags.body.contains("anonymous"), "\(tags.body)")

            // 8. admin: `podman login` with the admin token on stdin, then a pull by digest.
            let authFile = farm.dataDir.appendingPathComponent("credentials/login-auth.json").path
            let podman = try #require(ManagedProcess.which("podman"))
            let refused = try Spawn.run(podman, ["login", "--authfile", authFile, "--tls-verify=false", "-u", "admin", "--password-stdin", registry],
                                        environment: farm.infra.podman.environment, input: Data((wrong + "\n").utf8))
            #expect(refused.status != 0, "podman login with a wrong password must fail: \(String(decoding: refused.output, as: UTF8.self))")
            let login = try Spawn.run(podman, ["login", "--authfile", authFile, "--tls-verify=false", "-u", "admin", "--password-stdin", registry],
                                      environment: farm.infra.podman.environment, input: Data((farm.admin.password + "\n").utf8))
            #expect(login.status == 0, "\(String(decoding: login.output, as: UTF8.self))")
            _ = try? farm.podman(["rmi", "-f", image])
            try farm.podman(["pull", "--tls-verify=false", "--authfile", authFile, image])
        }
    }

    @Test("people log in to the registry with their name and an API token and get what their role allows; a public group's images pull without credentials")
    func registryScopesFromRoles() async throws {
        try await withFarm { farm in
            try await farm.addProject()
            let built = try await farm.finished(try await farm.startBuild().id)
            #expect(built.status == .succeeded, "\(built.error ?? "")")
            let registry = farm.infra.registry.address
            let image = try #require(built.imageByDigest)
            let docker = DockerClient(socketPath: farm.infra.podman.socketPath)
            var users: [String: RegistryCredentials] = [:]
            for name in ["rita", "dev", "otto"] {
                let password = "a long enough passphrase"
                #expect(try await farm.request(.POST, "/api/v1/users", body: try KilnJSON.encode(NewUser(name: name, password: password))).status == 201)
                let r = try await httpRequest(.POST, farm.api + "/api/v1/tokens", body: #"{"name":"registry"}"#, headers: [("Authorization", basic(name, password))])
                users[name] = RegistryCredentials(user: name, password: try KilnJSON.decode(CreatedToken.self, from: r.body).token)
                // A password is not a registry credential: a token is.
                let withPassword = try await httpRequest(.GET, farm.registryAuth.registry.realm + "?service=kiln-registry&scope=repository:demo:pull",
                                                         headers: [("Authorization", basic(name, password))])
                #expect(withPassword.status == 401)
            }
            #expect(try await farm.request(.PUT, "/api/v1/projects/demo/members/rita", body: #"{"role":"reporter"}"#).status == 200)
            #expect(try await farm.request(.PUT, "/api/v1/projects/demo/members/dev", body: #"{"role":"developer"}"#).status == 200)
            let scope = ["repository:demo:pull,push,delete", "registry:catalog:*"]
            #expect(try await farm.grantedAccess(users["rita"]!, scopes: scope).map(\.description) == ["repository:demo:pull"])
            #expect(try await farm.grantedAccess(users["dev"]!, scopes: scope).map(\.description) == ["repository:demo:pull,push"])
            #expect(try await farm.grantedAccess(users["otto"]!, scopes: scope).isEmpty)
            // Another user's token under one's own name is nobody's.
            let swapped = try await httpRequest(.GET, farm.registryAuth.registry.realm + "?service=kiln-registry&scope=repository:demo:pull",
                                                headers: [("Authorization", basic("otto", users["dev"]!.password))])
            #expect(swapped.status == 401)

            // Through the engine: the reporter pulls and cannot push; the outsider cannot pull.
            _ = try? farm.podman(["rmi", "-f", image])
            try await docker.pull(image, insecure: true, credentials: users["rita"]!)
            try farm.podman(["tag", image, "\(registry)/demo:by-rita"])
            await #expect(throws: DockerError.self, "a reporter's push") {
                _ = try await docker.push(image: "\(registry)/demo", tag: "by-rita", insecure: true, credentials: users["rita"]!) { _ in }
            }
            // The developer pushes; the registry reports it, and it lands in the project's activity.
            try farm.podman(["tag", image, "\(registry)/demo:by-dev"])
            let devPush = try await docker.push(image: "\(registry)/demo", tag: "by-dev", insecure: true, credentials: users["dev"]!) { _ in }
            #expect(devPush?.hasPrefix("sha256:") == true)
            var pushedLine: ActivityEntry?
            for _ in 0..<50 where pushedLine == nil {
                let feed = try KilnJSON.decode([ActivityEntry].self, from: try await farm.request(.GET, "/api/v1/projects/demo/activity").body)
                pushedLine = feed.first { $0.action == "image pushed" && $0.detail?.contains("demo:by-dev") == true }
                if pushedLine == nil { try await Task.sleep(for: .milliseconds(200)) }
            }
            #expect(pushedLine?.user == "dev", "\(String(describing: pushedLine))")
            // The events route takes the registry's token only.
            #expect(try await httpRequest(.POST, farm.api + "/hooks/registry", body: #"{"events":[]}"#).status == 401)
            #expect(try await httpRequest(.POST, farm.api + "/hooks/registry", body: #"{"events":[]}"#, headers: [("Authorization", "Bearer \(users["dev"]!.password)")]).status == 401)

            _ = try? farm.podman(["rmi", "-f", image])
            await #expect(throws: DockerError.self, "an outsider's pull") { try await docker.pull(image, insecure: true, credentials: users["otto"]!) }

            // A group made public: its images pull with no credentials at all; a private one's do not.
            #expect(try await farm.request(.POST, "/api/v1/groups", body: #"{"name":"pub"}"#).status == 201)
            _ = try? farm.podman(["pull", "--tls-verify=false", "--authfile", try farm.adminAuthFile(), image])
            try farm.podman(["tag", image, "\(registry)/pub/thing:1"])
            try farm.podman(["push", "--tls-verify=false", "--authfile", try farm.adminAuthFile(), "\(registry)/pub/thing:1"])
            let anonymousRealm = farm.registryAuth.registry.realm + "?service=kiln-registry&scope=repository:pub/thing:pull,push"
            #expect(try await httpRequest(.GET, anonymousRealm).status == 401, "a private group's image without credentials")
            #expect(try await farm.request(.PUT, "/api/v1/groups/pub", body: #"{"visibility":"public"}"#).status == 200)
            let publicToken = try await httpRequest(.GET, anonymousRealm)
            #expect(publicToken.status == 200)
            _ = try? farm.podman(["rmi", "-f", "\(registry)/pub/thing:1"])
            try await docker.pull("\(registry)/pub/thing:1", insecure: true)
            #expect(try await farm.grantedAccess(users["otto"]!, scopes: ["repository:pub/thing:pull,push"]).map(\.description) == ["repository:pub/thing:pull"])

            // A revoked token logs in no more.
            let id = try #require(try KilnJSON.decode([APIToken].self, from: try await httpRequest(.GET, farm.api + "/api/v1/tokens",
                                                                                               headers: [("Authorization", "Bearer \(users["dev"]!.password)")]).body).first?.id)
            #expect(try await httpRequest(.DELETE, farm.api + "/api/v1/tokens/\(id)", headers: [("Authorization", "Bearer \(users["dev"]!.password)")]).status == 200)
            let revoked = try await httpRequest(.GET, farm.registryAuth.registry.realm + "?service=kiln-registry&scope=repository:demo:pull",
                                                headers: [("Authorization", basic("dev", users["dev"]!.password))])
            #expect(revoked.status == 401)
        }
    }

    @Test("a hostile build that opens an upload into another project's repository without credentials is refused")
    func hostileBuildUpload() async throws {
        try await withFarm { farm in
            let port = farm.infra.registry.port
            // Bash's /dev/tcp: the build image has no curl. Tries the registry on loopback (host
            // network) and on the host's bridge address; prints the status line it gets, or
            // that it could not connect.
            let script = """
                for host in 127.0.0.1 host.containers.internal; do \
                  if exec 3<>/dev/tcp/$host/\(port); then \
                    printf 'POST /v2/demo/blobs/uploads/ HTTP/1.0\\r\\nHost: x\\r\\nContent-Length: 0\\r\\n\\r\\n' >&3; \
                    echo "upload via $host: $(head -n 1 <&3)"; exec 3>&-; \
                  else echo "upload via $host: no connection"; fi; \
                done; exit 7
                """
            try await farm.addProject("hostile", buildCommand: "bash -c '\(script.replacingOccurrences(of: "'", with: "'\\''"))'")
            let b = try await farm.finished(try await farm.startBuild("hostile").id)
            let log = try await farm.log(b.id)
            #expect(b.status == .failed && b.error?.contains("status 7") == true, "\(b.error ?? "") \(log)")
            // Refused for want of a token, or not reachable at all (a build on a bridge network).
            for host in ["127.0.0.1", "host.containers.internal"] {
                let answered = ["HTTP/1.0 401 Unauthorized", "HTTP/1.1 401 Unauthorized", "no connection"].contains { log.contains("upload via \(host): \($0)") }
                #expect(answered, "\(log)")
            }
            #expect(!log.contains(" 202 "), "the registry accepted an upload from the build: \(log)")
            #expect(!log.contains(farm.admin.password) && !farm.registryAuth.machines.values.contains { log.contains($0.password) })
        }
    }
}
}

func basic(_ user: String, _ password: String) -> String {
    "Basic " + Data("\(user):\(password)".utf8).base64EncodedString()
}

extension Farm {
    /// A podman auth file (mode 0600) with user admin's credentials for the farm's registry.
    func adminAuthFile() throws -> String {
        let path = dataDir.appendingPathComponent("credentials/admin-auth.json").path
        let auth = Data("admin:\(registryAuth.adminToken)".utf8).base64EncodedString()
        try CredentialFile.write(#"{"auths":{"\#(infra.registry.address)":{"auth":"\#(auth)"}}}"#, to: path)
        return path
    }

    /// A token from the scheduler's /auth/token for these scopes.
    func token(_ credentials: RegistryCredentials, scopes: [String]) async throws -> String {
        let query = (["service=kiln-registry"] + scopes.map { "scope=\($0.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? $0)" }).joined(separator: "&")
        let r = try await httpRequest(.GET, registryAuth.registry.realm + "?" + query, headers: [("Authorization", basic(credentials.user, credentials.password))])
        guard r.status == 200 else { throw FarmError("/auth/token for \(credentials.user): \(r.status) \(r.body)") }
        struct Answer: Decodable { let token: String; let expires_in: Int }
        let answer = try JSONDecoder().decode(Answer.self, from: Data(r.body.utf8))
        #expect(answer.expires_in <= 300)
        return answer.token
    }

    /// What the token service grants, read from the signed token (its signature checked).
    func grantedAccess(_ credentials: RegistryCredentials, scopes: [String]) async throws -> [ResourceAccess] {
        let token = try await token(credentials, scopes: scopes)
        let key = try TokenSigningKey.publicKey(ofCertificatePEM: try CredentialFile.read(registryAuth.registry.rootCertBundle.path))
        let claims = try RegistryToken.verify(token, publicKey: key)
        #expect(claims.sub == credentials.user && claims.aud == "kiln-registry" && claims.iss == "kiln")
        return claims.access
    }
}
