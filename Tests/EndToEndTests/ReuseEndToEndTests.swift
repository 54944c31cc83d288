import DockerAPI
import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Testing

extension EndToEndTests {
/// No rebuild of what was already built (docs/reuse.md), on a real agent, podman and registry
/// with token authentication. Nested in `EndToEndTests` so that its `.serialized` keeps it from
/// running beside the other farms.
@Suite("Reuse of builds with the same inputs")
struct ReuseEndToEndTests {
    static let busybox = "localhost/kiln/busybox:1"

    /// A farm whose agent reuses builds (the harness's agents do not: the other suites build one
    /// commit again on purpose, to watch caches and compiles).
    static func withReuseFarm(deploy: Bool = false, _ body: @Sendable (Farm) async throws -> Void) async throws {
        try await withFarm(deploy: deploy, configure: { farm, id in
            var c = farm.agentConfiguration(id)
            c.reuseBuilds = true
            return c
        }, body)
    }

    /// A repository whose Dockerfile copies a marker into a busybox image; `dockerfileExtra`
    /// changes the Dockerfile.
    static func publish(_ farm: Farm, repo: String, branch: String = "main", message: String = "Demo project", marker: String = "one",
                        dockerfileExtra: String = "") throws {
        _ = try DemoRepository.publish(source: DemoRepository.locateFixtures()!.appendingPathComponent("demo"),
                                       bareRepository: farm.infra.gitRoot.appendingPathComponent("\(repo).git"), branch: branch, message: message) { dir in
            try marker.write(to: dir.appendingPathComponent("marker"), atomically: true, encoding: .utf8)
            try "FROM \(Self.busybox)\nCOPY marker /marker\n\(dockerfileExtra)".write(to: dir.appendingPathComponent("Dockerfile"), atomically: true, encoding: .utf8)
        }
    }

    /// Each compile prints a line the log then holds (quoted apart so the command line the log
    /// repeats never holds it).
    static let command = #"echo "COMPILE-""RAN $KILN_BUILD""#

    static func addProject(_ farm: Farm, name: String, repo: String, buildImage: String = busybox, reuseBuilds: Bool? = nil,
                           pipeline: [PipelineStep]? = nil) async throws {
        var p = Project(name: name, repository: farm.infra.repositoryURL(repo), buildImage: buildImage, buildCommand: command)
        p.reuseBuilds = reuseBuilds
        p.pipeline = pipeline
        let r = try await farm.request(.POST, "/api/v1/projects", body: try KilnJSON.encode(p))
        #expect(r.status == 201 || r.status == 200, "\(r.body)")
    }

    static func run(_ farm: Farm, _ project: String, _ req: BuildRequest) async throws -> (Build, String) {
        let b = try await farm.finished(try await farm.startBuild(project, req).id, timeout: .seconds(180))
        let log = try await farm.log(b.id)
        return (b, log)
    }

    static func expectReal(_ b: Build, _ log: String, _ what: String) {
        #expect(b.status == .succeeded, "\(what): \(b.error ?? "") \(log)")
        #expect(b.reusedFrom == nil, "\(what) reused \(b.reusedFrom ?? "")")
        #expect(log.contains("COMPILE-RAN \(b.id)"), "\(what): no compile ran: \(log)")
        #expect(b.steps.allSatisfy { $0.status == .succeeded }, "\(what): \(b.steps)")
    }

    static func expectReused(_ b: Build, from source: Build, _ log: String, _ what: String) {
        #expect(b.status == .succeeded, "\(what): \(b.error ?? "") \(log)")
        #expect(b.reusedFrom == source.id, "\(what): reusedFrom \(b.reusedFrom ?? "nil"), not \(source.id): \(log)")
        #expect(b.digest == source.digest, "\(what)")
        #expect(!log.contains("COMPILE-RAN"), "\(what): a compile ran: \(log)")
        let status = Dictionary(uniqueKeysWithValues: b.steps.map { ($0.name, $0.status) })
        #expect(status == [.fetch: .succeeded, .compile: .skipped, .image: .skipped, .push: .succeeded], "\(what): \(b.steps)")
        #expect(b.steps.first { $0.name == .compile }?.note?.contains(source.id) == true, "\(what): \(b.steps)")
        #expect(b.inputs?.key == source.inputs?.key)
    }

    func registryDigest(_ farm: Farm, _ repository: String, _ tag: String) async throws -> String {
        try await DockerClient.registryDigest(registry: farm.infra.registry.address, repository: repository, tag: tag, insecure: true, credentials: farm.admin)
    }

    @Test("a second build of the same inputs tags the first's image (same digest, no compile), the image runs and the pipeline runs after it; a tag of the commit and another commit with the same tree reuse it too; rebuild, the project setting, a changed Dockerfile or build image, another project build for real")
    func reuse() async throws {
        try await Self.withReuseFarm(deploy: true) { farm in
            try farm.infra.podman.ensureBusyboxImage(Self.busybox)
            // The build image under a name of this test's own, so that it can later name another image.
            let builder = "localhost/kiln/reuse-builder:1"
            try farm.podman(["tag", Self.busybox, builder])
            try Self.publish(farm, repo: "reuse")
            // A post-build pipeline (not an input): a notify step to a URL the scheduler does not
            // allow, which fails, but only once the pipeline has run.
            let pipeline = [PipelineStep(plugin: "notify", settings: ["url": .string("http://127.0.0.1:9/reuse")])]
            try await Self.addProject(farm, name: "reuse", repo: "reuse", buildImage: builder, pipeline: pipeline)

            let (first, firstLog) = try await Self.run(farm, "reuse", BuildRequest(ref: "main", tag: "one"))
            Self.expectReal(first, firstLog, "the first build")
            let inputs = try #require(first.inputs, "\(firstLog)")
            #expect(inputs.protected && BuildInputs.isValidKey(inputs.key))
            #expect(inputs.tree.count == 40 && inputs.buildImage.hasPrefix("sha256:") && inputs.baseImages.count == 1, "\(inputs)")
            let entries = try await farm.etcd.range(prefix: farm.keys.reuseEntries(project: "reuse", key: inputs.key)).kvs
            #expect(entries.map(\.key) == [farm.keys.reuseEntry(project: "reuse", key: inputs.key, protected: true)])

            // The same commit again under another tag (a redeploy): no compile, same digest.
            let (second, secondLog) = try await Self.run(farm, "reuse", BuildRequest(ref: "main", tag: "two"))
            Self.expectReused(second, from: first, secondLog, "the second build")
            #expect(second.image == "\(farm.infra.registry.address)/reuse:two")
            #expect(try await registryDigest(farm, "reuse", "two") == first.digest)
            #expect(try await registryDigest(farm, "reuse", "one") == first.digest)
            // The API answer says which build was reused.
            let answered = try KilnJSON.decode(Build.self, from: try await farm.request(.GET, "/api/v1/builds/\(second.id)").body)
            #expect(answered.reusedFrom == first.id)
            // The post-build pipeline runs after the reused build as after the real one.
            for b in [first, second] {
                let ran = try await farm.waitForBuild(b.id, timeout: .seconds(60)) { $0.deploy?.status.isFinal == true }
                #expect(ran.deploy?.steps.first?.status != .pending, "\(String(describing: ran.deploy))")
            }
            // A tag pushed on the built commit (an unprotected ref): the protected build's image.
            let git = Process()
            git.executableURL = URL(fileURLWithPath: "/usr/bin/git")
            git.arguments = ["-C", farm.infra.gitRoot.appendingPathComponent("reuse.git").path, "tag", "v1", "main"]
            try git.run()
            git.waitUntilExit()
            #expect(git.terminationStatus == 0)
            let (tagged, taggedLog) = try await Self.run(farm, "reuse", BuildRequest(ref: "refs/tags/v1", tag: "v1"))
            Self.expectReused(tagged, from: first, taggedLog, "the tag's build")
            #expect(tagged.inputs?.protected == false)
            #expect(try await registryDigest(farm, "reuse", "v1") == first.digest)
            // The new tag runs: pulled back from the registry (as admin).
            let image = "\(farm.infra.registry.address)/reuse:two"
            _ = try? farm.podman(["rmi", "-f", image])
            try farm.podman(["pull", "--tls-verify=false", "--authfile", try farm.adminAuthFile(), image])
            defer { _ = try? farm.podman(["rmi", "-f", image]) }
            #expect(try farm.podman(["run", "--rm", image, "cat", "/marker"]).trimmingCharacters(in: .whitespacesAndNewlines) == "one")

            // Another commit (another message) with the same files, on a feature branch (an
            // unprotected ref): the same tree, so the protected build's image.
            try Self.publish(farm, repo: "reuse", branch: "feature", message: "Another commit, the same files")
            let (feature, featureLog) = try await Self.run(farm, "reuse", BuildRequest(ref: "feature", tag: "feature"))
            Self.expectReused(feature, from: first, featureLog, "the feature branch's build")
            #expect(feature.commit != first.commit && feature.inputs?.tree == inputs.tree)
            #expect(feature.inputs?.protected == false)

            // rebuild: a real build, recorded as the newest for these inputs.
            let (forced, forcedLog) = try await Self.run(farm, "reuse", BuildRequest(ref: "main", tag: "forced", rebuild: true))
            Self.expectReal(forced, forcedLog, "the rebuild")
            #expect(forced.rebuild == true && forced.inputs?.key == inputs.key)
            #expect(forcedLog.contains("reuse: none, a rebuild was asked for"), "\(forcedLog)")
            let (afterForced, afterForcedLog) = try await Self.run(farm, "reuse", BuildRequest(ref: "main", tag: "three"))
            Self.expectReused(afterForced, from: forced, afterForcedLog, "the build after the rebuild")

            // Another project with the very same inputs (repository, image, command): its own build.
            try await Self.addProject(farm, name: "reuse-twin", repo: "reuse", buildImage: builder)
            let (twin, twinLog) = try await Self.run(farm, "reuse-twin", BuildRequest(ref: "main", tag: "one"))
            Self.expectReal(twin, twinLog, "another project's build")
            #expect(twin.inputs?.tree == inputs.tree && twin.inputs?.key != inputs.key)

            // The project setting off: real builds.
            try await Self.addProject(farm, name: "reuse", repo: "reuse", buildImage: builder, reuseBuilds: false)
            let (off, offLog) = try await Self.run(farm, "reuse", BuildRequest(ref: "main", tag: "off"))
            Self.expectReal(off, offLog, "a build with reuseBuilds off")
            #expect(offLog.contains("reuse: none, the project's reuseBuilds is off"), "\(offLog)")
            try await Self.addProject(farm, name: "reuse", repo: "reuse", buildImage: builder)

            // Another build image under the same name (its id changed): a real build.
            let context = try TempDir("reuse-builder")
            try "FROM \(Self.busybox)\nLABEL kiln.test.reuse=\"\(UUID().uuidString)\"\n".write(to: context.url.appendingPathComponent("Containerfile"), atomically: true, encoding: .utf8)
            try farm.podman(["build", "-q", "-t", builder, context.url.path])
            defer { _ = try? farm.podman(["rmi", "-f", builder]) }
            let (newImage, newImageLog) = try await Self.run(farm, "reuse", BuildRequest(ref: "main", tag: "new-builder"))
            Self.expectReal(newImage, newImageLog, "a build with another build image")
            #expect(newImage.inputs?.tree == inputs.tree && newImage.inputs?.buildImage != inputs.buildImage)

            // A changed Dockerfile: a real build, whose image has the change.
            try Self.publish(farm, repo: "reuse", dockerfileExtra: "LABEL changed=yes\n")
            let (changed, changedLog) = try await Self.run(farm, "reuse", BuildRequest(ref: "main", tag: "changed"))
            Self.expectReal(changed, changedLog, "a build of a changed Dockerfile")
            #expect(changed.digest != first.digest && changed.inputs?.tree != inputs.tree)
        }
    }

    @Test("a failed build is never reused; a reuse whose image is gone from the registry builds for real; a protected ref never takes an unprotected build's image")
    func failedAndGone() async throws {
        try await Self.withReuseFarm { farm in
            try farm.infra.podman.ensureBusyboxImage(Self.busybox)
            try Self.publish(farm, repo: "fails")
            // A command that fails: no entry, and the next build runs (and fails) again.
            var p = Project(name: "fails", repository: farm.infra.repositoryURL("fails"), buildImage: Self.busybox, buildCommand: #"echo "COMPILE-""RAN"; exit 3"#)
            #expect(try await farm.request(.POST, "/api/v1/projects", body: try KilnJSON.encode(p)).status == 201)
            let (failed, _) = try await Self.run(farm, "fails", BuildRequest(ref: "main", tag: "f1"))
            #expect(failed.status == .failed && failed.inputs != nil)
            #expect(try await farm.etcd.range(prefix: farm.keys.reuseIndex + "fails/").kvs.isEmpty)
            let (failedAgain, againLog) = try await Self.run(farm, "fails", BuildRequest(ref: "main", tag: "f2"))
            #expect(failedAgain.status == .failed && failedAgain.reusedFrom == nil && againLog.contains("COMPILE-RAN"), "\(againLog)")
            #expect(againLog.contains("no earlier successful build has these inputs"), "\(againLog)")

            // The same project fixed: it builds, and the next build reuses it...
            p.buildCommand = Self.command
            #expect(try await farm.request(.POST, "/api/v1/projects", body: try KilnJSON.encode(p)).status == 200)
            let (good, goodLog) = try await Self.run(farm, "fails", BuildRequest(ref: "main", tag: "g1"))
            Self.expectReal(good, goodLog, "the fixed build")
            // ...unless its manifest left the registry (deleted by digest, as a registry GC would).
            let digest = try #require(good.digest)
            let manifest = "http://\(farm.infra.registry.address)/v2/fails/manifests/\(digest)"
            let challenge = try await httpRequest(.DELETE, manifest)
            var bearer = try #require(BearerChallenge(header: challenge.headers.first { $0.0.lowercased() == "www-authenticate" }?.1 ?? ""))
            bearer.scope = "repository:fails:delete,pull"
            let basic = Data("admin:\(farm.registryAuth.adminToken)".utf8).base64EncodedString()
            struct Token: Decodable { let token: String }
            let token = try JSONDecoder().decode(Token.self, from: Data(try await httpRequest(.GET, bearer.tokenURL, headers: [("Authorization", "Basic \(basic)")]).body.utf8))
            let deleted = try await httpRequest(.DELETE, manifest, headers: [("Authorization", "Bearer \(token.token)")])
            #expect(deleted.status == 202, "\(deleted.body)")
            let (rebuilt, rebuiltLog) = try await Self.run(farm, "fails", BuildRequest(ref: "main", tag: "g2"))
            Self.expectReal(rebuilt, rebuiltLog, "the build after the image was deleted")
            #expect(rebuiltLog.contains("the registry no longer has \(digest)"), "\(rebuiltLog)")
            // It is the entry now.
            let entry = try #require(try await farm.etcd.get(farm.keys.reuseEntry(project: "fails", key: rebuilt.inputs!.key, protected: true)))
            #expect(try KilnJSON.decode(ReuseEntry.self, from: entry.value).build == rebuilt.id)

            // A protected ref never takes the image of an unprotected ref's build (which ran with
            // the caches every branch writes into); the other way round it may.
            try Self.publish(farm, repo: "guarded", branch: "feature")
            try Self.publish(farm, repo: "guarded", branch: "main", message: "The same files on main")
            try await Self.addProject(farm, name: "guarded", repo: "guarded")
            let (feature, featureLog) = try await Self.run(farm, "guarded", BuildRequest(ref: "feature", tag: "feature"))
            Self.expectReal(feature, featureLog, "the feature branch's first build")
            #expect(feature.inputs?.protected == false)
            let (main, mainLog) = try await Self.run(farm, "guarded", BuildRequest(ref: "main", tag: "main"))
            Self.expectReal(main, mainLog, "main after a feature branch built the same tree")
            #expect(main.inputs?.key == feature.inputs?.key && main.inputs?.protected == true)
            #expect(mainLog.contains("was of an unprotected ref"), "\(mainLog)")
            let (again, againFeatureLog) = try await Self.run(farm, "guarded", BuildRequest(ref: "feature", tag: "feature-2"))
            Self.expectReused(again, from: main, againFeatureLog, "the feature branch after main built")

            // A build whose own code rewrites its Dockerfile after the inputs were read (here: a
            // COPY from an image, which no key describes): not recorded, so the next build of
            // the same commit compiles again.
            try Self.publish(farm, repo: "rewrites")
            var rewrites = Project(name: "rewrites", repository: farm.infra.repositoryURL("rewrites"), buildImage: Self.busybox,
                                   buildCommand: Self.command + #"; echo "COPY --from=\#(Self.busybox) /bin/true /planted" >> Dockerfile"#)
            rewrites.reuseBuilds = nil
            #expect(try await farm.request(.POST, "/api/v1/projects", body: try KilnJSON.encode(rewrites)).status == 201)
            let (first, firstLog) = try await Self.run(farm, "rewrites", BuildRequest(ref: "main", tag: "r1"))
            Self.expectReal(first, firstLog, "a build that rewrites its Dockerfile")
            #expect(firstLog.contains("the build's inputs changed while it ran"), "\(firstLog)")
            #expect(first.inputs == nil)
            #expect(try await farm.etcd.range(prefix: farm.keys.reuseIndex + "rewrites/").kvs.isEmpty)
            let (second, secondLog) = try await Self.run(farm, "rewrites", BuildRequest(ref: "main", tag: "r2"))
            Self.expectReal(second, secondLog, "the next build of the same commit")
        }
    }
}
}
