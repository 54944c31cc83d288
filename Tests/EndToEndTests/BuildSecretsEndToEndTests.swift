import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Testing

extension EndToEndTests {
/// Build secrets through the whole farm: set with the API, sealed in etcd by the scheduler,
/// asked for by the agent that holds the build (`POST /agent/v1/builds/{build}/secrets`),
/// given to the compile step and masked in the log. Nested in `EndToEndTests` for its
/// `.serialized` (the farms share the podman storage).
@Suite("Build secrets end to end")
struct BuildSecretsEndToEndTests {
    static let busybox = "localhost/kiln/busybox:1"

    @discardableResult
    static func publish(_ farm: Farm, branch: String) throws -> String {
        try DemoRepository.publish(source: DemoRepository.locateFixtures()!.appendingPathComponent("demo"),
                                   bareRepository: farm.infra.gitRoot.appendingPathComponent("vault.git"), branch: branch) { dir in
            try "FROM \(busybox)\nCOPY branch /branch\n".write(to: dir.appendingPathComponent("Dockerfile"), atomically: true, encoding: .utf8)
            try branch.write(to: dir.appendingPathComponent("branch"), atomically: true, encoding: .utf8)
        }
    }

    @Test("a secret set with the API reaches the build masked; a protected-only one is withheld from a feature branch; etcd holds neither in clear")
    func secretsThroughTheFarm() async throws {
        try await withFarm { farm in
            // Made here, not left to whichever test ran first: the suite's order is not fixed.
            try farm.infra.podman.ensureBusyboxImage(Self.busybox)
            try Self.publish(farm, branch: "main")
            try Self.publish(farm, branch: "feature")
            let project = Project(name: "vault", repository: farm.infra.repositoryURL("vault"), buildImage: Self.busybox,
                                  buildCommand: "echo \"token=$API_TOKEN\"; echo \"prod=${PROD_TOKEN:-absent}\"")
            let created = try await farm.request(.POST, "/api/v1/projects", body: try KilnJSON.encode(project))
            #expect(created.status == 201 || created.status == 200, "\(created.body)")
            let token = "tok-" + Secret.random(), prod = "prod-" + Secret.random()
            for (name, request) in [("API_TOKEN", SecretRequest(value: token)), ("PROD_TOKEN", SecretRequest(value: prod, protectedOnly: true))] {
                let r = try await farm.request(.PUT, "/api/v1/projects/vault/secrets/\(name)", body: try KilnJSON.encode(request))
                #expect((200..<300).contains(r.status), "\(r.status) \(r.body)")
            }

            let main = try await farm.finished(try await farm.startBuild("vault", BuildRequest(ref: "main")).id, timeout: .seconds(180))
            let mainLog = try await farm.log(main.id)
            #expect(main.status == .succeeded, "\(main.error ?? "")\n\(mainLog)")
            #expect(mainLog.contains("token=[masked]") && mainLog.contains("prod=[masked]"), "\(mainLog)")
            #expect(mainLog.contains("kiln: secrets received: build secrets "), "\(mainLog)")

            let feature = try await farm.finished(try await farm.startBuild("vault", BuildRequest(ref: "feature")).id, timeout: .seconds(180))
            let featureLog = try await farm.log(feature.id)
            #expect(feature.status == .succeeded, "\(feature.error ?? "")\n\(featureLog)")
            #expect(featureLog.contains("token=[masked]") && featureLog.contains("prod=absent"), "\(featureLog)")
            #expect(featureLog.contains("kiln: secrets withheld (for protected refs only, and feature is not one): PROD_TOKEN"), "\(featureLog)")

            let everything = try await farm.etcd.range(prefix: "/").kvs.map { "\($0.key)=\($0.string)" }.joined(separator: "\n")
            #expect(!everything.contains(token) && !everything.contains(prod), "a value in clear in etcd")
            #expect(!mainLog.contains(token) && !mainLog.contains(prod) && !featureLog.contains(token))
        }
    }
}
}
