import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Sealing
import Testing

extension EndToEndTests {
/// A private repository through the whole farm: nginx with basic auth in front of
/// `git http-backend`, the project's git credential set with the API (never in the URL), the
/// secrets key rotated while a build that uses a secret runs, and the failures a wrong or
/// deleted credential gives. Nested in `EndToEndTests` for its `.serialized`.
@Suite("Private repositories end to end")
struct PrivateRepositoryEndToEndTests {
    @Test("a private repository builds with its token; the key rotates under a running build; a wrong or deleted token fails naming the credential")
    func privateRepositoryWithRotation() async throws {
        let token = "glpat-" + Secret.random(bytes: 12)
        let root = try TempDir("private-git")
        try DemoRepository.publish(source: DemoRepository.locateFixtures()!.appendingPathComponent("demo"),
                                   bareRepository: root.path("private.git"), branch: "main") { dir in
            try "FROM \(BuildSecretsEndToEndTests.busybox)\nCOPY Dockerfile /Dockerfile\n".write(to: dir.appendingPathComponent("Dockerfile"), atomically: true, encoding: .utf8)
        }
        let git = try await PrivateGitHTTPServer.start(root: root.url, username: "deploy", password: token)
        defer { git.stop() }
        try await withFarm(configure: { farm, id in farm.agentConfiguration(id, allowFetchFrom: [git.server]) }) { farm in
            try farm.infra.podman.ensureBusyboxImage(BuildSecretsEndToEndTests.busybox)
            let project = Project(name: "private", repository: git.url("private.git"), buildImage: BuildSecretsEndToEndTests.busybox,
                                  buildCommand: "sleep 4; echo \"api=$API_TOKEN\"")
            let created = try await farm.request(.POST, "/api/v1/projects", body: try KilnJSON.encode(project))
            #expect(created.status == 201, "\(created.body)")
            // A URL with the token in it is refused, and says where a credential goes.
            var leaky = project
            leaky.name = "leaky"
            leaky.repository = git.url("private.git").replacingOccurrences(of: "http://", with: "http://deploy:\(token)@")
            let refused = try await farm.request(.POST, "/api/v1/projects", body: try KilnJSON.encode(leaky))
            #expect(refused.status == 400 && refused.body.contains("kiln credential set git") && !refused.body.contains(token), "\(refused.body)")

            // Without a credential: the fetch says the server wants one.
            let none = try await farm.finished(try await farm.startBuild("private").id, timeout: .seconds(180))
            #expect(none.status == .failed && (none.error ?? "").contains("kiln credential set git"), "\(none.error ?? "")")

            let apiToken = "api-" + Secret.random(bytes: 12)
            for (path, body) in [("credentials/git", try KilnJSON.encode(GitCredentialRequest(username: "deploy", token: token))),
                                 ("secrets/API_TOKEN", try KilnJSON.encode(SecretRequest(value: apiToken)))] {
                let r = try await farm.request(.PUT, "/api/v1/projects/private/\(path)", body: body)
                #expect((200..<300).contains(r.status), "\(path): \(r.status) \(r.body)")
            }
            let keyFile = farm.dataDir.appendingPathComponent("credentials/\(LocalSecretsKey.fileName)").path
            let oldKey = try SecretsKeyring(path: keyFile).primaryID

            // The build gets its secrets, then the key rotates while it sleeps in its compile step.
            let running = try await farm.startBuild("private")
            try await farm.waitForLog(running.id, containing: "secrets received")
            let newKey = try SecretsKeyring.addKey(at: keyFile)
            for _ in 0..<2 {
                let r = try await farm.request(.POST, "/api/v1/admin/secrets/reseal")
                #expect(r.status == 200, "\(r.body)")
            }
            try SecretsKeyring.keepOnly([], at: keyFile)
            let done = try await farm.finished(running.id, timeout: .seconds(180))
            let log = try await farm.log(running.id)
            #expect(done.status == .succeeded, "\(done.error ?? "")\n\(log)")
            #expect(log.contains("api=[masked]") && !log.contains(apiToken) && !log.contains(token), "\(log)")
            // Every value under the new key only; none in clear anywhere in etcd.
            let all = try await farm.etcd.range(prefix: "/").kvs
            let sealed = all.filter { $0.key.hasPrefix(farm.keys.secrets) }.compactMap { try? KilnJSON.decode(StoredSecret.self, from: $0.string) }
            #expect(!sealed.isEmpty && sealed.allSatisfy { $0.sealed.kid == newKey } && newKey != oldKey)
            let everything = all.map { "\($0.key)=\($0.string)" }.joined(separator: "\n")
            #expect(!everything.contains(token) && !everything.contains(apiToken), "a value in clear in etcd")
            // A build after the rotation opens everything under the new key.
            let after = try await farm.finished(try await farm.startBuild("private").id, timeout: .seconds(180))
            #expect(after.status == .succeeded, "\(after.error ?? "")")

            // A wrong token: the fetch fails naming the credential, never the token.
            let wrong = "glpat-wrong-" + Secret.random(bytes: 8)
            #expect(try await farm.request(.PUT, "/api/v1/projects/private/credentials/git",
                                           body: try KilnJSON.encode(GitCredentialRequest(username: "deploy", token: wrong))).status == 200)
            let refusedBuild = try await farm.finished(try await farm.startBuild("private").id, timeout: .seconds(180))
            let refusedLog = try await farm.log(refusedBuild.id)
            #expect(refusedBuild.status == .failed && (refusedBuild.error ?? "").contains("user deploy"), "\(refusedBuild.error ?? "")")
            #expect(!(refusedBuild.error ?? "").contains(wrong) && !refusedLog.contains(wrong))

            // Deleted: the next fetch fails saying the project has none.
            #expect((200..<300).contains(try await farm.request(.DELETE, "/api/v1/projects/private/credentials/git").status))
            let gone = try await farm.finished(try await farm.startBuild("private").id, timeout: .seconds(180))
            #expect(gone.status == .failed && (gone.error ?? "").contains("kiln credential set git"), "\(gone.error ?? "")")
        }
    }
}
}
