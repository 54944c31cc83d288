@testable import BuildAgent
import DockerAPI
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Testing

/// Registry logins against a second registry with htpasswd authentication (Distribution's
/// `auth.htpasswd`, bcrypt): `pushTo` with the right login, a wrong password and none, and a
/// build `FROM` a base image only that registry holds, with and without the login.
@Suite("Registry logins: pushTo and private base images, against a registry with htpasswd", .serialized)
struct RegistryLoginTests {
    static let dockerfiles = [
        "Dockerfile.private": "FROM BASE\nRUN cat /base.txt\nCOPY hello.txt /hello.txt\n",
        "Dockerfile": "FROM \(busyboxImage)\nCOPY hello.txt /hello.txt\n",
        "hello.txt": "hello\n",
    ]

    /// The private base image `<registry>/secretapp:base` (the sandbox lets a build start from
    /// an image named like its own project on a loopback registry), pushed there and gone from
    /// the engine.
    static func pushPrivateBase(_ farm: SecretsFarm) async throws -> String {
        let base = "\(farm.privateRegistry.address)/secretapp:base"
        let context = try TempDir("private-base")
        try "FROM \(busyboxImage)\nRUN echo private-base-content > /base.txt\n".write(to: context.path("Dockerfile"), atomically: true, encoding: .utf8)
        _ = try await farm.docker.build(contextDirectory: context.url, tag: base) { _ in }
        _ = try await farm.docker.push(image: "\(farm.privateRegistry.address)/secretapp", tag: "base", insecure: true,
                                       credentials: RegistryCredentials(user: farm.registryUser, password: farm.registryPassword)) { _ in }
        try await farm.docker.removeImage(base, force: true)
        #expect(try await farm.docker.imageID(base) == nil)
        return base
    }

    /// `GET /v2/<repository>/tags/list` and the tag's manifest digest, with HTTP Basic.
    static func registryTag(_ farm: SecretsFarm, repository: String, tag: String) async throws -> (tags: [String], digest: String?) {
        let auth = [("Authorization", "Basic " + Data("\(farm.registryUser):\(farm.registryPassword)".utf8).base64EncodedString())]
        let list = try await httpRequest(.GET, "\(farm.privateRegistry.url)/v2/\(repository)/tags/list", headers: auth)
        struct Tags: Decodable { let tags: [String]? }
        let tags = (try? JSONDecoder().decode(Tags.self, from: Data(list.body.utf8)))?.tags ?? []
        let manifest = try await httpRequest(.HEAD, "\(farm.privateRegistry.url)/v2/\(repository)/manifests/\(tag)",
                                             headers: auth + [("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")])
        return (tags, manifest.headers.first { $0.0.lowercased() == "docker-content-digest" }?.1)
    }

    @Test("pushTo with the project's login: tagged and pushed, listed in the record; wrong password and no login fail naming host and user")
    func pushTo() async throws {
        try await SecretsFarm.with(suite: "logins") { farm in
            try farm.git.commit(Self.dockerfiles)
            let host = farm.privateRegistry.address
            let project = farm.project("true", pushTo: ["\(host)/team/app"])

            let built = try await farm.build(project, source: FixedSecretsSource(BuildSecrets(registries: [farm.login])))
            #expect(built.build.status == .succeeded, "\(built.build.error ?? "")\n\(built.log)")
            let tag = try #require(built.build.tag)
            let pushed = try #require(built.build.pushedTo?.first, "\(built.build)")
            #expect(built.build.pushedTo?.count == 1)
            #expect(pushed.hasPrefix("\(host)/team/app:\(tag)@sha256:"), "\(pushed)")
            let inRegistry = try await Self.registryTag(farm, repository: "team/app", tag: tag)
            #expect(inRegistry.tags == [tag])
            #expect(inRegistry.digest.map { pushed.hasSuffix("@\($0)") } == true, "\(inRegistry.digest ?? "no digest") vs \(pushed)")
            #expect(built.log.contains("pushing \(host)/team/app:\(tag) (pushTo) as user \(farm.registryUser) of \(host)"), "\(built.log)")
            #expect(built.shows(any: [farm.registryPassword]).isEmpty)
            #expect(try await farm.docker.imageID("\(host)/team/app:\(tag)") == nil, "the pushTo name leaves the engine with the build")

            let wrong = "wrong-" + Secret.random()
            let refused = try await farm.build(project, source: FixedSecretsSource(BuildSecrets(registries: [
                RegistryLogin(host: host, username: farm.registryUser, password: wrong),
            ])))
            #expect(refused.build.status == .failed)
            let error = try #require(refused.build.steps.first { $0.name == .push }?.error)
            #expect(error.contains("the registry \(host) refused the credential of user \(farm.registryUser)"), "\(error)")
            #expect(error.contains("kiln credential set registry \(host) --project secretapp"), "\(error)")
            #expect(refused.shows(any: [wrong, farm.registryPassword]).isEmpty, "\(refused.log)")

            let none = try await farm.build(project, source: FixedSecretsSource(.none))
            #expect(none.build.status == .failed)
            #expect(none.build.error == "push: no registry credential for \(host): set one with `kiln credential set registry \(host) --project secretapp`",
                    "\(none.build.error ?? "")")
            #expect(!none.log.contains("pushing \(farm.farmRegistry.address)"), "nothing is pushed when a pushTo login is missing")
        }
    }

    @Test("FROM a base image only the private registry holds: built with the project's login, a clear failure without it or with a wrong one")
    func privateBaseImage() async throws {
        try await SecretsFarm.with(suite: "logins") { farm in
            let base = try await Self.pushPrivateBase(farm)
            var files = Self.dockerfiles
            files["Dockerfile.private"] = files["Dockerfile.private"]!.replacingOccurrences(of: "BASE", with: base)
            try farm.git.commit(files)
            let host = farm.privateRegistry.address
            let project = farm.project("true", dockerfile: "Dockerfile.private")

            let built = try await farm.build(project, source: FixedSecretsSource(BuildSecrets(registries: [farm.login])))
            #expect(built.build.status == .succeeded, "\(built.build.error ?? "")\n\(built.log)")
            #expect(built.log.contains("pulling \(base) with the project's login for \(host) (user \(farm.registryUser))"), "\(built.log)")
            #expect(built.log.contains("private-base-content"), "the RUN saw the private base image's file:\n\(built.log)")
            #expect(try await farm.docker.imageID(base) == nil, "the private image is not left under its name for other builds")
            let leftovers = try farm.podman.podmanCommand(["images", "--format", "{{.Repository}}"]).output
            #expect(!leftovers.contains("kiln-pulled"), "\(leftovers)")

            let without = try await farm.build(project, source: FixedSecretsSource(.none))
            #expect(without.build.status == .failed)
            let error = try #require(without.build.error)
            #expect(error.contains("the registry \(host) asks for credentials the project has not got: set a login with `kiln credential set registry \(host) --project secretapp`"), "\(error)")

            let wrong = "wrong-" + Secret.random()
            let refused = try await farm.build(project, source: FixedSecretsSource(BuildSecrets(registries: [
                RegistryLogin(host: host, username: farm.registryUser, password: wrong),
            ])))
            #expect(refused.build.status == .failed)
            let refusal = try #require(refused.build.error)
            #expect(refusal.contains("could not pull \(base) from \(host) with the login of user \(farm.registryUser)"), "\(refusal)")
            #expect(refusal.contains("The registry refused that login"), "\(refusal)")
            #expect(refused.shows(any: [wrong]).isEmpty)
        }
    }

    @Test("the build image on the private registry: pulled with the login for the compile step, then gone")
    func privateBuildImage() async throws {
        try await SecretsFarm.with(suite: "logins") { farm in
            let base = try await Self.pushPrivateBase(farm)
            try farm.git.commit(Self.dockerfiles)
            let project = farm.project("cat /base.txt", buildImage: base)
            let built = try await farm.build(project, source: FixedSecretsSource(BuildSecrets(registries: [farm.login])))
            #expect(built.build.status == .succeeded, "\(built.build.error ?? "")\n\(built.log)")
            #expect(built.log.contains("private-base-content"), "\(built.log)")
            #expect(try await farm.docker.imageID(base) == nil)
            let leftovers = try farm.podman.podmanCommand(["images", "--format", "{{.Repository}}"]).output
            #expect(!leftovers.contains("kiln-pulled"), "\(leftovers)")
        }
    }
}
