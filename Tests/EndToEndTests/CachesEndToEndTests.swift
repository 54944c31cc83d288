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

    @Test("a build that writes into its caches and then fails, or is cancelled, leaves them exactly as they were; two builds of one project at once on one agent both succeed and both keep what they wrote")
    func onlySuccessChangesTheCaches() async throws {
        // The farm's agent takes two builds at once.
        try await withFarm { farm in
            try farm.infra.podman.ensureBusyboxImage(Self.busybox)
            _ = try DemoRepository.publish(source: DemoRepository.locateFixtures()!.appendingPathComponent("demo"),
                                           bareRepository: farm.infra.gitRoot.appendingPathComponent("layers.git"), branch: "main") { dir in
                try "FROM \(Self.busybox)\nCOPY Dockerfile /built-from\n".write(to: dir.appendingPathComponent("Dockerfile"), atomically: true, encoding: .utf8)
            }
            func project(_ name: String, _ command: String) async throws {
                var p = Project(name: name, repository: farm.infra.repositoryURL("layers"), buildImage: Self.busybox, buildCommand: command)
                p.caches = ["/root/.m2", "/root/.gradle"]
                let r = try await farm.request(.POST, "/api/v1/projects", body: try KilnJSON.encode(p))
                #expect(r.status == 201, "\(r.body)")
            }
            let root = farm.dataDir.appendingPathComponent("agents/agent-1/mvncache/protected")
            func cache(_ project: String) -> [String: String] {
                var out: [String: String] = [:]
                for rel in ["seen", "deps/a.jar", "deps/b.jar", ".kiln-caches/root%2F.gradle/seen", ".kiln-caches/root%2F.gradle/keep"] {
                    out[rel] = try? String(contentsOf: root.appendingPathComponent("\(project)/\(rel)"), encoding: .utf8)
                }
                return out
            }
            func run(_ project: String, tag: String) async throws -> (Build, String) {
                let b = try await farm.finished(try await farm.startBuild(project, BuildRequest(ref: "main", tag: tag, mvncache: true)).id, timeout: .seconds(180))
                return (b, try await farm.log(b.id))
            }

            // A first, good build fills the caches.
            let fill = #"mkdir -p /root/.m2/deps && echo a > /root/.m2/deps/a.jar && echo good > /root/.m2/seen && echo kept > /root/.gradle/keep && echo good > /root/.gradle/seen"#
            // Then a build that changes, adds and deletes in both caches and fails.
            let spoil = #"echo bad > /root/.m2/seen; echo planted > /root/.m2/deps/b.jar; rm -f /root/.gradle/keep /root/.m2/deps/a.jar; echo bad > /root/.gradle/seen; if [ -f /root/.m2/spoil-fails ]; then exit 3; fi; echo SPOIL-""WAITING; sleep 300"#
            try await project("spoil", fill + "; touch /root/.m2/spoil-fails")
            let (good, goodLog) = try await run("spoil", tag: "good")
            #expect(good.status == .succeeded, "\(good.error ?? "") \(goodLog)")
            #expect(goodLog.contains("caches: this build's changes are kept"), "\(goodLog)")
            let filled = cache("spoil")
            #expect(filled["seen"] == "good\n" && filled["deps/a.jar"] == "a\n" && filled[".kiln-caches/root%2F.gradle/keep"] == "kept\n", "\(filled)")

            var p = try KilnJSON.decode(Project.self, from: try await farm.request(.GET, "/api/v1/projects/spoil").body)
            p.buildCommand = spoil
            #expect(try await farm.request(.POST, "/api/v1/projects", body: try KilnJSON.encode(p)).status == 200)
            let (failed, failedLog) = try await run("spoil", tag: "failed")
            #expect(failed.status == .failed && failedLog.contains("exited with status 3"), "\(failed.status) \(failedLog)")
            #expect(failedLog.contains("caches: the changes of this build to them are dropped"), "\(failedLog)")
            #expect(cache("spoil") == filled, "a failed build changed the caches")

            // A cancelled one: it has written its changes and sleeps when it is cancelled.
            try FileManager.default.removeItem(at: root.appendingPathComponent("spoil/spoil-fails"))
            let cancelled = try await farm.startBuild("spoil", BuildRequest(ref: "main", tag: "cancelled", mvncache: true))
            try await farm.waitForLog(cancelled.id, containing: "SPOIL-WAITING")
            #expect(try await farm.request(.POST, "/api/v1/builds/\(cancelled.id)/cancel").status == 200)
            let ended = try await farm.finished(cancelled.id, timeout: .seconds(120))
            #expect(ended.status == .cancelled, "\(ended.status) \(ended.error ?? "")")
            var expected = filled
            expected["spoil-fails"] = nil
            #expect(cache("spoil") == expected, "a cancelled build changed the caches")

            // Two builds of one project at once on the one agent: neither waits for the other's
            // caches, their compile steps overlap, both succeed and both files are kept.
            let both = #"echo "$KILN_BUILD" > /root/.m2/by-$KILN_BUILD; mkdir -p /root/.gradle/by && echo x > /root/.gradle/by/$KILN_BUILD; sleep 3; ls /root/.m2 | grep -c '^by-' | sed 's/^/SAW-/'"#
            try await project("twice", both)
            let one = try await farm.startBuild("twice", BuildRequest(ref: "main", tag: "one", mvncache: true))
            let two = try await farm.startBuild("twice", BuildRequest(ref: "main", tag: "two", mvncache: true))
            let b1 = try await farm.finished(one.id, timeout: .seconds(180)), b2 = try await farm.finished(two.id, timeout: .seconds(180))
            let l1 = try await farm.log(b1.id), l2 = try await farm.log(b2.id)
            #expect(b1.status == .succeeded && b2.status == .succeeded, "\(l1) \(l2)")
            #expect(!(l1 + l2).contains("waiting for the caches"), "a build waited for the other's caches")
            // They ran at once: their compile steps overlap in time.
            let c1 = b1.steps.first { $0.name == .compile }, c2 = b2.steps.first { $0.name == .compile }
            if let s1 = c1?.startedAt, let e1 = c1?.finishedAt, let s2 = c2?.startedAt, let e2 = c2?.finishedAt {
                #expect(s1 < e2 && s2 < e1, "the compile steps did not overlap: \(s1)–\(e1), \(s2)–\(e2)")
            } else {
                Issue.record("a compile step has no times: \(b1.steps) \(b2.steps)")
            }
            let twice = root.appendingPathComponent("twice")
            for b in [b1, b2] {
                #expect(FileManager.default.fileExists(atPath: twice.appendingPathComponent("by-\(b.id)").path))
                #expect(FileManager.default.fileExists(atPath: twice.appendingPathComponent(".kiln-caches/root%2F.gradle/by/\(b.id)").path))
            }
            // No layer is left once both ended: the cache is whole in its folder.
            let state = farm.dataDir.appendingPathComponent("agents/agent-1/mvncache/.layers/protected/twice")
            #expect(!FileManager.default.fileExists(atPath: state.path), "the layers' state stayed after both builds ended")
        }
    }

    @Test("--cache-writes direct: builds write the caches in place, a second build of the project waits for the first, and a failed build's writes stay")
    func directWrites() async throws {
        try await withFarm(configure: { farm, id in
            var c = farm.agentConfiguration(id)
            c.cacheWrites = .direct
            return c
        }) { farm in
            try farm.infra.podman.ensureBusyboxImage(Self.busybox)
            _ = try DemoRepository.publish(source: DemoRepository.locateFixtures()!.appendingPathComponent("demo"),
                                           bareRepository: farm.infra.gitRoot.appendingPathComponent("direct.git"), branch: "main") { dir in
                try "FROM \(Self.busybox)\nCOPY Dockerfile /built-from\n".write(to: dir.appendingPathComponent("Dockerfile"), atomically: true, encoding: .utf8)
            }
            let command = #"echo "$KILN_BUILD" >> /root/.m2/seen; sleep 2; if [ -f /root/.m2/fail ]; then exit 3; fi"#
            let p = Project(name: "direct", repository: farm.infra.repositoryURL("direct"), buildImage: Self.busybox, buildCommand: command)
            #expect(try await farm.request(.POST, "/api/v1/projects", body: try KilnJSON.encode(p)).status == 201)
            let a = try await farm.startBuild("direct", BuildRequest(ref: "main", tag: "a", mvncache: true))
            let b = try await farm.startBuild("direct", BuildRequest(ref: "main", tag: "b", mvncache: true))
            let (doneA, doneB) = (try await farm.finished(a.id, timeout: .seconds(180)), try await farm.finished(b.id, timeout: .seconds(180)))
            let logs = [try await farm.log(a.id), try await farm.log(b.id)]
            #expect(doneA.status == .succeeded && doneB.status == .succeeded, "\(logs)")
            #expect(logs.filter { $0.contains("waiting for the caches of direct") }.count == 1, "\(logs)")
            #expect(!logs.contains { $0.contains("kept only if it succeeds") })
            let cache = farm.dataDir.appendingPathComponent("agents/agent-1/mvncache/protected/direct")
            try "".write(to: cache.appendingPathComponent("fail"), atomically: true, encoding: .utf8)
            let failed = try await farm.finished(try await farm.startBuild("direct", BuildRequest(ref: "main", tag: "c", mvncache: true)).id, timeout: .seconds(180))
            #expect(failed.status == .failed)
            let seen = try String(contentsOf: cache.appendingPathComponent("seen"), encoding: .utf8)
            #expect(seen.contains(failed.id), "in place, a failed build's write stays: \(seen)")
        }
    }
}
}
