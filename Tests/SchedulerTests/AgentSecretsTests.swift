import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import NIOHTTP1
import RegistryAuth
@testable import Scheduler
import Testing

/// `POST /agent/v1/builds/{build}/secrets` as an agent calls it, and what etcd holds once
/// every kind of secret is set.
@Suite("Secrets for agents", .serialized)
struct AgentSecretsTests {
    /// Registers a machine the way `kiln machine add` does; returns its token.
    static func machine(_ h: SchedulerHarness, _ name: String, kind: MachineCredential.Kind) async throws -> String {
        let token = "kiln_" + Secret.random()
        try await h.etcd.put(h.keys.machine(name), try KilnJSON.encode(MachineCredential(name: name, kind: kind, tokenSHA256: MachineToken.sha256Hex(token))))
        return token
    }

    static func basic(_ user: String, _ secret: String) -> [(String, String)] {
        [("Authorization", "Basic " + Data("\(user):\(secret)".utf8).base64EncodedString())]
    }

    static func ask(_ h: SchedulerHarness, _ build: String, _ headers: [(String, String)]) async throws -> HTTPReply {
        try await h.request(.POST, "/agent/v1/builds/\(build)/secrets", token: nil, headers: headers)
    }

    static func queue(_ h: SchedulerHarness, _ project: String, ref: String) async throws -> Build {
        let r = try await h.request(.POST, "/api/v1/projects/\(project)/builds", body: #"{"ref":"\#(ref)"}"#)
        #expect(r.status == 201, "\(r.body)")
        return try KilnJSON.decode(Build.self, from: r.body)
    }

    /// What the dispatcher's assignment writes for `agent`: the grant (with the build's
    /// protection ref) and the record naming the agent, running.
    static func hold(_ h: SchedulerHarness, _ build: Build, by agent: String) async throws {
        var b = try await h.build(build.id)
        b.agent = agent
        b.status = .running
        try await h.etcd.put(h.keys.build(b.id), try KilnJSON.encode(b))
        try await h.etcd.put(h.keys.grant(agent: agent, build: b.id), BuildGrant(repository: "team/shop", ref: b.protectionRef).value)
    }

    static let shop = #"{"name":"shop","group":"team","repository":"https://git.example.com/team/shop.git","buildImage":"a:1","buildCommand":"make","protectedRefs":["release/*"]}"#

    @Test func onlyTheAgentHoldingTheBuildGetsItsSecretsAndProtectedOnesOnlyForProtectedRefs() async throws {
        try await withScheduler { h in
            #expect(try await h.request(.POST, "/api/v1/groups", body: #"{"name":"team"}"#).status == 201)
            #expect(try await h.request(.POST, "/api/v1/projects", body: Self.shop).status == 201)
            let other = #"{"name":"other","repository":"https://git.example.com/o.git","buildImage":"a:1","buildCommand":"make"}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: other).status == 201)
            for (path, body) in [
                ("groups/team/secrets/NPM_TOKEN", #"{"value":"group-npm-token"}"#),
                ("projects/shop/secrets/SIGNING_KEY", #"{"value":"signing-key-value","protectedOnly":true}"#),
                ("projects/shop/credentials/git", #"{"username":"deploy","token":"glpat-shop-token"}"#),
                ("groups/team/credentials/registry/127.0.0.1:5001", #"{"username":"ci","password":"registry-pw-1"}"#),
                ("projects/other/secrets/OTHER_TOKEN", #"{"value":"another-projects-token"}"#),
            ] {
                #expect(try await h.request(.PUT, "/api/v1/\(path)", body: body).status == 201, "\(path)")
            }
            let agent1 = try await Self.machine(h, "agent-1", kind: .agent)
            let agent2 = try await Self.machine(h, "agent-2", kind: .agent)
            let deployer = try await Self.machine(h, "deployer", kind: .deployer)
            let main = try await Self.queue(h, "shop", ref: "main")
            let feature = try await Self.queue(h, "shop", ref: "feature/x")
            // What the dispatcher writes in the assignment's transaction.
            try await Self.hold(h, main, by: "agent-1")
            try await Self.hold(h, feature, by: "agent-1")

            // Who is refused, and how.
            let refusals: [(String, [(String, String)], Int)] = [
                ("no credentials", [], 401),
                ("a wrong token", Self.basic("agent-1", agent2), 401),
                ("a deployer", Self.basic("deployer", deployer), 401),
                ("a person's API token", Self.basic("admin", h.adminToken), 401),
                ("a bearer token", [("Authorization", "Bearer \(h.adminToken)")], 401),
                ("another agent", Self.basic("agent-2", agent2), 403),
            ]
            for (who, headers, status) in refusals {
                let r = try await Self.ask(h, main.id, headers)
                #expect(r.status == status && !r.body.contains("glpat") && !r.body.contains("signing-key"), "\(who): \(r.status) \(r.body)")
            }
            let noGrant = try await Self.queue(h, "shop", ref: "main")
            // A developer pins a feature branch's commit on main: no protected ref is held.
            let pinned = try await h.request(.POST, "/api/v1/projects/shop/builds", body: #"{"ref":"main","commit":"0123456789abcdef0123456789abcdef01234567"}"#)
            let pinnedBuild = try KilnJSON.decode(Build.self, from: pinned.body)
            #expect(pinnedBuild.commitPinnedByRequest == true && pinnedBuild.protectionRef == nil)
            try await Self.hold(h, pinnedBuild, by: "agent-1")
            let pinnedSecrets = try KilnJSON.decode(BuildSecrets.self, from: try await Self.ask(h, pinnedBuild.id, Self.basic("agent-1", agent1)).body)
            #expect(pinnedSecrets.withheld == ["SIGNING_KEY"] && !pinnedSecrets.maskedValues.contains("signing-key-value"))
            // Ended, its grant still there (the agent kept its task key): nothing more.
            var ended = try await h.build(pinnedBuild.id)
            ended.status = .succeeded
            try await h.etcd.put(h.keys.build(ended.id), try KilnJSON.encode(ended))
            #expect(try await Self.ask(h, pinnedBuild.id, Self.basic("agent-1", agent1)).status == 403, "an ended build")
            #expect(try await Self.ask(h, noGrant.id, Self.basic("agent-1", agent1)).status == 403, "a build without a grant")
            #expect(try await Self.ask(h, "not-a-build", Self.basic("agent-1", agent1)).status == 403)
            #expect(try await Self.ask(h, "Not_A_Build", Self.basic("agent-1", agent1)).status == 400)

            // The agent holding the build, on a protected ref: everything.
            let given = try await Self.ask(h, main.id, Self.basic("agent-1", agent1))
            #expect(given.status == 200, "\(given.body)")
            #expect(given.headers.contains { $0.0.lowercased() == "cache-control" && $0.1 == "no-store" })
            let secrets = try KilnJSON.decode(BuildSecrets.self, from: given.body)
            #expect(secrets.env.map(\.name) == ["NPM_TOKEN", "SIGNING_KEY"] && secrets.withheld.isEmpty)
            #expect(secrets.git == .token(username: "deploy", token: "glpat-shop-token"))
            #expect(secrets.login(for: "127.0.0.1:5001") == RegistryLogin(host: "127.0.0.1:5001", username: "ci", password: "registry-pw-1"))
            #expect(!given.body.contains("another-projects-token"))
            // A feature branch: the protected-only secret is named, not given.
            let withheld = try KilnJSON.decode(BuildSecrets.self, from: try await Self.ask(h, feature.id, Self.basic("agent-1", agent1)).body)
            #expect(withheld.env.map(\.name) == ["NPM_TOKEN"] && withheld.withheld == ["SIGNING_KEY"])
            #expect(!withheld.maskedValues.contains("signing-key-value"))
            // The agent rewrites the feature build's record to name the protected branch: the
            // granted ref decides, so the protected-only secret stays withheld.
            var renamed = try await h.build(feature.id)
            renamed.ref = "main"
            try await h.etcd.put(h.keys.build(feature.id), try KilnJSON.encode(renamed))
            let stillWithheld = try await Self.ask(h, feature.id, Self.basic("agent-1", agent1))
            #expect(stillWithheld.status == 200 && !stillWithheld.body.contains("signing-key-value"), "\(stillWithheld.body)")
            // A grant written before refs were granted (the bare repository) gives no protected-only secret.
            try await h.etcd.put(h.keys.grant(agent: "agent-1", build: feature.id), "team/shop")
            let legacy = try KilnJSON.decode(BuildSecrets.self, from: try await Self.ask(h, feature.id, Self.basic("agent-1", agent1)).body)
            #expect(legacy.withheld == ["SIGNING_KEY"] && legacy.env.map(\.name) == ["NPM_TOKEN"])

            // An agent rewrites its build's record (it may write builds/) to point at another project.
            var forged = try await h.build(main.id)
            forged.project = "other"
            try await h.etcd.put(h.keys.build(main.id), try KilnJSON.encode(forged))
            let stolen = try await Self.ask(h, main.id, Self.basic("agent-1", agent1))
            #expect(stolen.status == 403 && !stolen.body.contains("another-projects-token"), "\(stolen.body)")
            forged.project = "../other"
            try await h.etcd.put(h.keys.build(main.id), try KilnJSON.encode(forged))
            #expect(try await Self.ask(h, main.id, Self.basic("agent-1", agent1)).status == 403)
            // The grant gone (the build given back): refused.
            try await h.etcd.delete(h.keys.grant(agent: "agent-1", build: feature.id))
            #expect(try await Self.ask(h, feature.id, Self.basic("agent-1", agent1)).status == 403)
        }
    }

    /// The issue's scan: every kind of secret set through the API, then every key and value of
    /// etcd read: none holds a value in clear or in base64 (standard or URL-safe).
    @Test func etcdHoldsNoSecretInClear() async throws {
        try await withScheduler { h in
            let sshKey = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ-deploy-key-body\n-----END OPENSSH PRIVATE KEY-----"
            let values = [
                "glpat-git-token-value", sshKey, "registry-password-value", "project-build-secret", "group-build-secret",
                "gitlab-webhook-token", "kube-bearer-token-value", "cell-client-key-body",
            ]
            #expect(try await h.request(.POST, "/api/v1/groups", body: #"{"name":"team"}"#).status == 201)
            let shop = Self.shop.replacingOccurrences(of: #""make""#, with: #""make","webhookSecret":"gitlab-webhook-token""#)
            #expect(try await h.request(.POST, "/api/v1/projects", body: shop).status == 201)
            let ssh = #"{"name":"ssh-app","repository":"ssh://git@git.example.com/team/ssh-app.git","buildImage":"a:1","buildCommand":"make"}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: ssh).status == 201)
            #expect(try await h.request(.PUT, "/api/v1/cells/k1", body: #"{"name":"k1","backend":"kubernetes","endpoint":"https://127.0.0.1:6443"}"#).status == 201)
            #expect(try await h.request(.PUT, "/api/v1/cells/k2", body: #"{"name":"k2","backend":"kubernetes","endpoint":"https://127.0.0.1:6444"}"#).status == 201)
            let ca = "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----"
            let sets: [(String, String)] = [
                ("projects/shop/credentials/git", #"{"username":"deploy","token":"glpat-git-token-value"}"#),
                ("projects/ssh-app/credentials/git", try KilnJSON.encode(GitCredentialRequest(sshKey: sshKey, knownHosts: "git.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"))),
                ("projects/shop/credentials/registry/registry.example.com", #"{"username":"ci","password":"registry-password-value"}"#),
                ("projects/shop/secrets/BUILD_TOKEN", #"{"value":"project-build-secret","protectedOnly":true}"#),
                ("groups/team/secrets/GROUP_TOKEN", #"{"value":"group-build-secret","file":true}"#),
                ("cells/k1/credentials", #"{"token":"kube-bearer-token-value","certificateAuthority":"\#(ca)"}"#),
                ("cells/k2/credentials", #"{"clientCertificate":"-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----","clientKey":"-----BEGIN PRIVATE KEY-----\ncell-client-key-body\n-----END PRIVATE KEY-----","certificateAuthority":"\#(ca)"}"#),
            ]
            for (path, body) in sets {
                let r = try await h.request(.PUT, "/api/v1/\(path)", body: body)
                #expect(r.status == 201, "\(path): \(r.status) \(r.body)")
            }
            // They are there, and open: an agent holding a build gets them back.
            let agent = try await Self.machine(h, "agent-1", kind: .agent)
            let build = try await Self.queue(h, "shop", ref: "main")
            try await Self.hold(h, build, by: "agent-1")
            let given = try KilnJSON.decode(BuildSecrets.self, from: try await Self.ask(h, build.id, Self.basic("agent-1", agent)).body)
            #expect(Set(given.maskedValues) == ["glpat-git-token-value", "registry-password-value", "project-build-secret", "group-build-secret"])

            let all = try await h.etcd.range(prefix: "/").kvs
            let sealed = all.filter { $0.key.hasPrefix(h.keys.secrets) }
            #expect(sealed.count == 9, "check, webhook, 2 git, registry, 2 build secrets, 2 cells and nothing else: \(sealed.map(\.key))")
            for value in values {
                let forms = [value, Data(value.utf8).base64EncodedString(), Data(value.utf8).base64EncodedString()
                    .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")]
                    + value.split(separator: "\n").filter { $0.count > 20 && !$0.hasPrefix("-----") }.map(String.init)
                for kv in all {
                    for form in forms {
                        #expect(!kv.key.contains(form) && !kv.string.contains(form), "\(kv.key) holds a secret (\(value.prefix(12))…) in clear")
                    }
                }
            }
        }
    }
}
