import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Testing

extension EndToEndTests {
/// A project's declared caches (`Project.caches`) on a real agent and podman. Nested in
/// `EndToEndTests` so that its `.serialized` keeps it from running beside the other farms.
@Suite("Caches per project")
struct CachesEndToEndTests {
    static let busybox = "localhost/kiln/busybox:1"
    static let caches = ["/root/.m2", "/root/.gradle", "/var/cache/npm"]

    @Test("each declared cache is mounted from the project's folder: the second build finds what the first wrote, /root/.m2 in the Maven cache's old folder; mvncache off mounts none and changes none; another ref's build gets the other caches")
    func declaredCachesPersist() async throws {
        try await withFarm { farm in
            try farm.infra.podman.ensureBusyboxImage(Self.busybox)
            for branch in ["main", "feature"] {
                _ = try DemoRepository.publish(source: DemoRepository.locateFixtures()!.appendingPathComponent("demo"),
                                               bareRepository: farm.infra.gitRoot.appendingPathComponent("caches.git"), branch: branch) { dir in
                    try "FROM \(Self.busybox)\nCOPY Dockerfile /built-from\n".write(to: dir.appendingPathComponent("Dockerfile"), atomically: true, encoding: .utf8)
                }
            }
            // Each build reports what an earlier one left in each cache, then leaves its own id.
            // (The marker is quoted apart so that the command line the log repeats never holds it.)
            let command = #"for d in /root/.m2 /root/.gradle /var/cache/npm; do if [ -f $d/seen ]; then echo "FOUND-""$d $(cat $d/seen)"; fi; mkdir -p $d; echo "$KILN_BUILD" > $d/seen; done"#
            var p = Project(name: "tools", repository: farm.infra.repositoryURL("caches"), buildImage: Self.busybox, buildCommand: command)
            p.caches = Self.caches
            let r = try await farm.request(.POST, "/api/v1/projects", body: try KilnJSON.encode(p))
            #expect(r.status == 201, "\(r.body)")
            let saved = try KilnJSON.decode(Project.self, from: try await farm.request(.GET, "/api/v1/projects/tools").body)
            #expect(saved.caches == Self.caches)

            func run(_ req: BuildRequest) async throws -> (Build, String) {
                let b = try await farm.finished(try await farm.startBuild("tools", req).id, timeout: .seconds(180))
                let log = try await farm.log(b.id)
                #expect(b.status == .succeeded, "\(b.error ?? "") \(log)")
                return (b, log)
            }
            let (first, firstLog) = try await run(BuildRequest(ref: "main", tag: "one", mvncache: true))
            #expect(firstLog.contains("caches mounted: /root/.m2, /root/.gradle, /var/cache/npm"), "\(firstLog)")
            #expect(!firstLog.contains("FOUND-/"), "a first build found a cache: \(firstLog)")

            let (_, secondLog) = try await run(BuildRequest(ref: "main", tag: "two", mvncache: true))
            for d in Self.caches {
                #expect(secondLog.contains("FOUND-\(d) \(first.id)"), "the second build did not find what the first wrote in \(d): \(secondLog)")
            }
            // On the agent: /root/.m2 is the project's Maven cache folder as before, the others
            // folders of their own beside Maven's files.
            let root = farm.dataDir.appendingPathComponent("agents/agent-1/mvncache/protected/tools")
            for folder in ["", ".kiln-caches/root%2F.gradle", ".kiln-caches/var%2Fcache%2Fnpm"] {
                let seen = root.appendingPathComponent(folder).appendingPathComponent("seen")
                #expect(FileManager.default.fileExists(atPath: seen.path), "\(seen.path)")
            }
            let before = try String(contentsOf: root.appendingPathComponent(".kiln-caches/root%2F.gradle/seen"), encoding: .utf8)

            // mvncache off: nothing mounted, so nothing found and nothing changed.
            let (_, offLog) = try await run(BuildRequest(ref: "main", tag: "off", mvncache: false))
            #expect(offLog.contains("no caches)"), "\(offLog)")
            #expect(!offLog.contains("FOUND-/"), "a build without caches found one: \(offLog)")
            #expect(try String(contentsOf: root.appendingPathComponent(".kiln-caches/root%2F.gradle/seen"), encoding: .utf8) == before)

            // Another ref's build: the unprotected caches, where the main builds left nothing.
            let (_, featureLog) = try await run(BuildRequest(ref: "feature", tag: "feature", mvncache: true))
            #expect(featureLog.contains("caches: the ones of unprotected refs"), "\(featureLog)")
            #expect(!featureLog.contains("FOUND-/"), "a feature build found the main builds' caches: \(featureLog)")
            #expect(FileManager.default.fileExists(atPath: farm.dataDir.appendingPathComponent("agents/agent-1/mvncache/shared/tools/.kiln-caches/var%2Fcache%2Fnpm/seen").path))

            // A build that swaps its Gradle cache's folder for a link to a folder of the host
            // (seen through /root/.m2/.kiln-caches): the next build's /root/.gradle is a plain
            // folder again, and the host folder gets nothing.
            let outside = try TempDir("caches-outside")
            let plant = #"echo x > /root/.gradle/escaped; rm -rf /root/.m2/.kiln-caches/root%2F.gradle && ln -s "# + outside.url.path + #" /root/.m2/.kiln-caches/root%2F.gradle && echo PLANTED-'OK'"#
            var planter = Project(name: "planter", repository: farm.infra.repositoryURL("caches"), buildImage: Self.busybox, buildCommand: plant)
            planter.caches = ["/root/.m2", "/root/.gradle"]
            #expect(try await farm.request(.POST, "/api/v1/projects", body: try KilnJSON.encode(planter)).status == 201)
            for n in 1...2 {
                let b = try await farm.finished(try await farm.startBuild("planter", BuildRequest(ref: "main", tag: "p\(n)", mvncache: true)).id, timeout: .seconds(180))
                let log = try await farm.log(b.id)
                #expect(b.status == .succeeded && log.contains("PLANTED-OK"), "\(b.error ?? "") \(log)")
            }
            #expect(try FileManager.default.contentsOfDirectory(atPath: outside.url.path).isEmpty, "a build wrote through a planted link into the host")
        }
    }
}
}
