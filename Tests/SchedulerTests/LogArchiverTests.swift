import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Logging
@testable import Scheduler
import Testing

/// Logs leaving etcd for the archive, against a real etcd and the archive on this disk.
@Suite("Log archiver")
struct LogArchiverTests {
    static let keys = Keys()

    /// A farm's worth of state for one test: etcd, an archive folder, the store and archiver.
    struct Setup: Sendable {
        let etcd: EtcdClient
        let dir: TempDir
        let store: SchedulerStore
        let archiver: LogArchiver
        var keys: Keys { store.keys }

        init(_ etcd: EtcdClient, archive: (any LogArchive)? = nil, folder: String = "archive") throws {
            self.etcd = etcd
            dir = try TempDir("log-archiver")
            store = SchedulerStore(etcd: etcd, logArchive: archive ?? LocalLogArchive(directory: dir.path(folder)))
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            archiver = LogArchiver(store: store, configuration: .init(retryAfter: .milliseconds(100), retryAtMost: .milliseconds(400), sweepEvery: .seconds(2)), logger: logger)!
        }

        /// Writes the record as `build` says, and chunks `names` with the lines given; the last
        /// chunk is an end chunk when `end`.
        func write(_ build: Build, chunks: [(name: String, lines: [String])], end: Bool = false) async throws {
            var ops: [TxnOp] = [.put(keys.build(build.id), try KilnJSON.encode(build))]
            for (i, c) in chunks.enumerated() {
                let chunk = LogChunk(seq: i, lines: c.lines, end: end && i == chunks.count - 1 ? true : nil)
                ops.append(.put(keys.logs(of: build.id) + c.name, try KilnJSON.encode(chunk)))
            }
            for batch in stride(from: 0, to: ops.count, by: 100) {
                _ = try await etcd.txn(Txn(success: Array(ops[batch..<min(batch + 100, ops.count)])))
            }
        }

        func chunkNames(_ id: String) async throws -> [String] {
            try await etcd.range(prefix: keys.logs(of: id)).kvs.map { String($0.key.dropFirst(keys.logs(of: id).count)) }
        }

        func record(_ id: String) async throws -> Build { try await store.build(id) }
    }

    static func build(_ status: BuildStatus = .running) -> Build {
        var b = Build(id: BuildID.generate(), project: "p", ref: "main")
        b.status = status
        b.attempt = 1
        return b
    }

    /// `count` chunks of attempt 1, `per` lines each.
    static func attempt(_ count: Int, per: Int = 3, tag: String = "line") -> [(name: String, lines: [String])] {
        (0..<count).map { i in (String(format: "001-%08d", i), (0..<per).map { "\(tag) \(i).\($0)" }) }
    }

    @Test("an ended build's log leaves etcd and reads the same, byte for byte; a later pipeline run's lines are added after it")
    func archivesAndReadsTheSame() async throws {
        try await withEtcd { _, etcd in
            let s = try Setup(etcd)
            var b = Self.build()
            let chunks = Self.attempt(250) + [(name: "001-99999999", lines: ["kiln: the end"])]
            try await s.write(b, chunks: Array(chunks.prefix(10)))
            #expect(try await s.archiver.pass(b.id, fence: []) == .nothing("the build has not ended"))
            b.status = .succeeded
            b.deploy = PipelineRun(run: 1, pipeline: [], trigger: "build succeeded")
            try await s.write(b, chunks: chunks, end: true)
            #expect(try await s.archiver.pass(b.id, fence: []) == .nothing("its pipeline run 1 is pending"))
            b.deploy!.status = .succeeded
            let run1 = (0..<4).map { (String(format: "p001-%08d", $0), ["==> deploy \($0)"]) }
            try await s.write(b, chunks: chunks + run1, end: true)
            let before = try await s.store.log(of: b.id)
            #expect(before.count == 755)  // 250 chunks of 3 lines, the end line, 4 of the run

            // 255 chunks: three transactions of deletes, the first with the record's mark.
            #expect(try await s.archiver.pass(b.id, fence: []) == .archived(lines: before.count, deleted: 255))
            #expect(try await s.chunkNames(b.id).isEmpty)
            let mark = try #require(try await s.record(b.id).logArchive)
            #expect(mark.lines == before.count && mark.through == "p001-00000003")
            #expect(try await s.store.log(of: b.id) == before)
            #expect(try await s.archiver.pass(b.id, fence: []) == .nothing("no chunk in etcd"))
            // Another scheduler on the same folder reads it alike; one without the archive says what is missing.
            #expect(try await SchedulerStore(etcd: etcd, logArchive: LocalLogArchive(directory: s.dir.path("archive"))).log(of: b.id) == before)
            do {
                _ = try await SchedulerStore(etcd: etcd).log(of: b.id)
                Issue.record("a store without the archive showed an archived log")
            } catch let e as KilnError {
                #expect(e.httpStatus == 503 && e.message.contains("--log-archive"), "\(e)")
            }

            // Run again (a roll back): its lines are in etcd while it runs, then join the archive.
            var again = try await s.record(b.id)
            again.deploy = PipelineRun(run: 2, pipeline: [], trigger: "api")
            again.deploy!.status = .running
            let run2 = [(name: "p002-00000000", lines: ["==> run 2"]), (name: "p002-00000001", lines: ["==> end of pipeline run 2"])]
            try await s.write(again, chunks: run2, end: true)
            #expect(try await s.store.log(of: b.id) == before + ["==> run 2", "==> end of pipeline run 2"])
            #expect(try await s.archiver.pass(b.id, fence: []) == .nothing("its pipeline run 2 is running"))
            again.deploy!.status = .failed
            _ = try await etcd.put(s.keys.build(b.id), try KilnJSON.encode(again))
            #expect(try await s.archiver.pass(b.id, fence: []) == .archived(lines: before.count + 2, deleted: 2))
            #expect(try await s.chunkNames(b.id).isEmpty)
            #expect(try await s.store.log(of: b.id) == before + ["==> run 2", "==> end of pipeline run 2"])
        }
    }

    /// The folder archive with a hook that runs while a store is under way.
    struct Interfering: LogArchive {
        let inner: LocalLogArchive
        let during: @Sendable () async throws -> Void
        func store(build: String, lines: [String]) async throws -> String? {
            let version = try await inner.store(build: build, lines: lines)
            try await during()
            return version
        }
        func read(build: String) async throws -> [String]? { try await inner.read(build: build) }
        func delete(build: String) async throws { try await inner.delete(build: build) }
    }

    @Test("a chunk written or rewritten while the archive stores, or a record changed, is not lost: the deletes are refused or spare it")
    func writesMeanwhileAreKept() async throws {
        try await withEtcd { _, etcd in
            let dir = try TempDir("log-archiver")
            let hook = HookBox()
            let s = try Setup(etcd, archive: Interfering(inner: LocalLogArchive(directory: dir.path("a")), during: { try await hook.run() }))
            let b = Self.build(.failed)
            let id = b.id
            try await s.write(b, chunks: Self.attempt(5), end: true)
            let first = try await s.store.log(of: b.id)

            // A new chunk after the archived ones: the archived five go, it stays, and it is shown after them.
            await hook.set { _ = try await etcd.put(s.keys.logs(of: id) + "p001-00000000", try KilnJSON.encode(LogChunk(seq: 0, lines: ["late"], end: true))) }
            #expect(try await s.archiver.pass(b.id, fence: []) == .archived(lines: 15, deleted: 5))
            #expect(try await s.chunkNames(b.id) == ["p001-00000000"])
            #expect(try await s.store.log(of: b.id) == first + ["late"])

            // An archived chunk rewritten meanwhile: nothing is deleted, the record keeps its mark,
            // and the rewritten lines are what every reader sees until the next pass archives them.
            await hook.set { _ = try await etcd.put(s.keys.logs(of: id) + "p001-00000000", try KilnJSON.encode(LogChunk(seq: 0, lines: ["rewritten"], end: true))) }
            await #expect(throws: KilnError.self) { try await s.archiver.pass(b.id, fence: []) }
            #expect(try await s.chunkNames(b.id) == ["p001-00000000"])
            #expect(try await s.record(b.id).logArchive?.lines == 15)
            #expect(try await s.store.log(of: b.id) == first + ["rewritten"])
            await hook.set {}
            #expect(try await s.archiver.pass(b.id, fence: []) == .archived(lines: 16, deleted: 1))
            #expect(try await s.store.log(of: b.id) == first + ["rewritten"])

            // The record changed meanwhile (a run asked for): nothing leaves etcd.
            let marked = try await s.record(b.id)
            try await s.write(marked, chunks: [(name: "p002-00000000", lines: ["run 2"])])
            await hook.set {
                var changed = marked
                changed.deploy = PipelineRun(run: 3, pipeline: [], trigger: "api")
                _ = try await etcd.put(s.keys.build(id), try KilnJSON.encode(changed))
            }
            await #expect(throws: KilnError.self) { try await s.archiver.pass(b.id, fence: []) }
            #expect(try await s.chunkNames(b.id) == ["p002-00000000"])
            #expect(try await s.store.log(of: b.id) == first + ["rewritten", "run 2"])
        }
    }

    @Test("archive down: the chunks stay, the log is served from etcd; once it is back the next pass moves them")
    func archiveDown() async throws {
        try await withEtcd { _, etcd in
            let s = try Setup(etcd)
            let folder = s.dir.path("archive")
            try Data("a file where the folder should be".utf8).write(to: folder)
            let b = Self.build(.succeeded)
            try await s.write(b, chunks: Self.attempt(3), end: true)
            let before = try await s.store.log(of: b.id)
            // Told apart from a failure of this build: the whole queue pauses on it.
            await #expect(throws: LogArchiver.StoreFailure.self) { try await s.archiver.pass(b.id, fence: []) }
            #expect(try await s.chunkNames(b.id).count == 3)
            #expect(try await s.record(b.id).logArchive == nil)
            #expect(try await s.store.log(of: b.id) == before)
            try FileManager.default.removeItem(at: folder)
            #expect(try await s.archiver.pass(b.id, fence: []) == .archived(lines: 9, deleted: 3))
            #expect(try await s.store.log(of: b.id) == before)
        }
    }

    @Test("a pass of a scheduler that no longer leads deletes nothing and marks nothing")
    func fenced() async throws {
        try await withEtcd { _, etcd in
            let s = try Setup(etcd)
            let b = Self.build(.cancelled)
            try await s.write(b, chunks: Self.attempt(3), end: true)
            let before = try await s.store.log(of: b.id)
            _ = try await etcd.put(s.keys.leader, "another scheduler")
            await #expect(throws: KilnError.self) { try await s.archiver.pass(b.id, fence: [.createRevision(s.keys.leader, .equal, 1)]) }
            #expect(try await s.chunkNames(b.id).count == 3)
            #expect(try await s.record(b.id).logArchive == nil)
            #expect(try await s.store.log(of: b.id) == before)
        }
    }

    /// Puts a key of raw bytes (not necessarily UTF-8) through the gateway, as any client can.
    static func putRaw(_ server: EtcdServer, _ key: [UInt8], _ value: String) async throws {
        let body = #"{"key":"\#(Data(key).base64EncodedString())","value":"\#(Data(value.utf8).base64EncodedString())"}"#
        let reply = try await httpRequest(.POST, "\(server.endpoint)/v3/kv/put", body: body)
        #expect(reply.status == 200, "\(reply.body)")
    }

    @Test("keys under /kiln/logs/ that are not Kiln's (bytes that are not UTF-8, names not of a chunk's form) stop neither the walk, nor a read, nor the archiving")
    func hostileKeys() async throws {
        // About 300 writes before the checks: a loaded machine needs more than the default minute.
        try await withEtcd(timeout: .seconds(180)) { server, etcd in
            let s = try Setup(etcd)
            let b = Self.build(.failed)
            try await s.write(b, chunks: Self.attempt(150), end: true)
            let prefix = Array(s.keys.logs.utf8)
            // More than a page of junk after the chunks (0xFF sorts after every digit and 'p'),
            // a build segment of bytes that is not UTF-8 before the real build and one after it,
            // and ASCII names that are not chunks.
            for i in 0..<120 { try await Self.putRaw(server, Array(s.keys.logs(of: b.id).utf8) + [0xFF, 0xFE] + Array(String(i).utf8), "junk") }
            try await Self.putRaw(server, prefix + [0x61, 0xFF] + Array("/001-00000000".utf8), "junk")
            try await Self.putRaw(server, prefix + [0xFF] + Array("/x".utf8), "junk")
            try await Self.putRaw(server, prefix + Array("../../etc/passwd".utf8), "junk")
            _ = try await etcd.put(s.keys.logs(of: b.id) + "zzz", try KilnJSON.encode(LogChunk(seq: 0, lines: ["injected"])))
            let expected = Self.attempt(150).flatMap(\.lines)

            for page in [2, 1000] {
                var found: [String] = []
                try await s.archiver.buildsWithLogs(page: page) { found.append($0) }
                #expect(found == [b.id], "page \(page)")
            }
            #expect(try await withTimeout(.seconds(30), waitingFor: "the read") { try await s.store.log(of: b.id) } == expected)
            #expect(try await withTimeout(.seconds(30), waitingFor: "the pass") { try await s.archiver.pass(b.id, fence: []) } == .archived(lines: 450, deleted: 150))
            #expect(try await s.store.log(of: b.id) == expected)
        }
    }

    @Test("the walk finds every build with chunks, in key order, reading keys only a page at a time however the ids share their start")
    func walk() async throws {
        try await withEtcd(timeout: .seconds(180)) { _, etcd in
            let s = try Setup(etcd)
            // Ids made in the same millisecond share all but their random part; some builds
            // have more chunks than a page; an id that is another's start; junk between them.
            let now = Date()
            var ids = (0..<12).map { BuildID.generate(now: now.addingTimeInterval(Double($0 % 3))) }
            ids.append(ids[0] + "-x")
            for (i, id) in ids.enumerated() {
                var b = Self.build(.running)
                b.id = id
                try await s.write(b, chunks: Self.attempt(1 + i * 5 % 13))
            }
            for junk in ["B0ABC/001-00000000", "b0/", String(repeating: "a", count: 70) + "/001-00000000", "~/x", "zz"] {
                _ = try await etcd.put(s.keys.logs + junk, "junk")
            }
            // Key order: a build's chunks are under "id/", and "id-x/" sorts before "id/".
            let expected = ids.sorted { ($0 + "/").utf8.lexicographicallyPrecedes(($1 + "/").utf8) }
            for page in [4, 1000] {
                var found: [String] = []
                let count = try await s.archiver.buildsWithLogs(page: page) { found.append($0) }
                #expect(found == expected, "page \(page): \(found.count) of \(ids.count)")
                #expect(count == ids.count)
            }
        }
    }

    @Test("a reader between the mark and the last deletes sees every line once; the next pass deletes the rest")
    func partlyDeleted() async throws {
        // About 360 writes one after another: a loaded full run took more than 60 s for them.
        try await withEtcd(timeout: .seconds(180)) { _, etcd in
            let s = try Setup(etcd)
            var b = Self.build(.failed)
            let chunks = Self.attempt(250)
            try await s.write(b, chunks: chunks, end: true)
            let before = try await s.store.log(of: b.id)
            // What a pass leaves when it stops after its first transaction: the archive whole, the
            // mark, the first 100 chunks gone, and one chunk after the mark written since.
            try await s.store.logArchive!.store(build: b.id, lines: before)
            b.logArchive = ArchivedLog(archivedAt: Date(), lines: before.count, through: "001-00000249")
            _ = try await etcd.put(s.keys.build(b.id), try KilnJSON.encode(b))
            for c in chunks.prefix(100) { _ = try await etcd.delete(s.keys.logs(of: b.id) + c.name) }
            _ = try await etcd.put(s.keys.logs(of: b.id) + "p001-00000000", try KilnJSON.encode(LogChunk(seq: 0, lines: ["after"], end: true)))
            #expect(try await s.store.log(of: b.id) == before + ["after"])
            #expect(try await s.archiver.pass(b.id, fence: []) == .archived(lines: before.count + 1, deleted: 151))
            #expect(try await s.chunkNames(b.id).isEmpty)
            #expect(try await s.store.log(of: b.id) == before + ["after"])
            // A mark whose archive file is gone: the reader says so instead of showing half a log.
            try await s.store.logArchive!.delete(build: b.id)
            await #expect(throws: KilnError.self) { try await s.store.log(of: b.id) }
        }
    }
}

/// A hook the tests change between passes.
actor HookBox {
    private var hook: @Sendable () async throws -> Void = {}
    func set(_ h: @escaping @Sendable () async throws -> Void) { hook = h }
    func run() async throws { try await hook() }
}

/// What etcd holds per build before and after the logs leave it (the figures go into the
/// issue's report; the test checks only that archiving frees what the logs took).
@Suite("Log archive: etcd bytes per build")
struct LogArchiveSizeTests {
    static func maintenance(_ server: EtcdServer, _ call: String) async throws -> [String: Any] {
        let reply = try await httpRequest(.POST, "\(server.endpoint)/v3/maintenance/\(call)", body: "{}")
        return try #require(reply.json, "\(call): \(reply.body)")
    }

    static func dbSize(_ server: EtcdServer) async throws -> (total: Int, inUse: Int) {
        let s = try await maintenance(server, "status")
        return (Int(s["dbSize"] as? String ?? "") ?? -1, Int(s["dbSizeInUse"] as? String ?? "") ?? -1)
    }

    /// A Maven build's log (256 KiB in 4 KiB chunks), and a quiet one like `kiln up`'s demo
    /// (about 2.5 KB, a line per 50 ms flush).
    @Test("20 builds: the log bytes leave etcd and, after compaction and defragmentation, the database shrinks back",
          arguments: [(chunks: 64, bytesPerChunk: 4096), (chunks: 25, bytesPerChunk: 100)])
    func bytesPerBuild(chunksPerBuild: Int, bytesPerChunk: Int) async throws {
        try await withEtcd(timeout: .seconds(120)) { server, etcd in
            let s = try LogArchiverTests.Setup(etcd)
            let builds = 20
            let line = "[INFO] Downloaded from mirror: org/apache/maven/some-artifact-1.0.jar "
            let empty = try await Self.dbSize(server)
            var ids: [String] = []
            for _ in 0..<builds {
                let b = LogArchiverTests.build(.succeeded)
                ids.append(b.id)
                let chunks = (0..<chunksPerBuild).map { i in (String(format: "001-%08d", i), (0..<max(1, bytesPerChunk / (line.utf8.count + 8))).map { "\(line)\(i).\($0)" }) }
                try await s.write(b, chunks: chunks, end: true)
            }
            let logs = try await etcdBytes(etcd, under: s.keys.logs)
            let records = try await etcdBytes(etcd, under: s.keys.builds)
            let written = try await Self.dbSize(server)
            var archived = 0
            for id in ids { if case .archived = try await s.archiver.pass(id, fence: []) { archived += 1 } }
            #expect(archived == builds)
            let afterLogs = try await etcdBytes(etcd, under: s.keys.logs)
            try await etcd.compact(revision: try await etcd.status())
            _ = try await Self.maintenance(server, "defragment")
            let compacted = try await Self.dbSize(server)
            var archiveBytes = 0
            for id in ids { archiveBytes += Int((try FileManager.default.attributesOfItem(atPath: (s.store.logArchive as! LocalLogArchive).file(of: id).file.path)[.size] as? Int) ?? 0) }
            #expect(afterLogs.bytes == 0 && afterLogs.keys == 0)
            // What is left is the records (about 7 KB) on a few of bbolt's 4 KiB pages.
            #expect(compacted.total < written.total && compacted.total - empty.total <= 32 << 10,
                    "db \(empty.total) empty, \(written.total) with the logs, \(compacted.total) after")
            print("""
                log archive sizes, \(builds) builds of \(logs.bytes / builds) log bytes in \(logs.keys / builds) chunks each:
                  etcd key+value bytes per build: logs \(logs.bytes / builds) before, \(afterLogs.bytes / builds) after; record \(records.bytes / builds)
                  etcd db size: \(empty.total) empty, \(written.total) with the logs (+\((written.total - empty.total) / builds) per build), \
                \(compacted.total) after archiving, compaction and defragmentation (+\((compacted.total - empty.total) / builds) per build; in use \(compacted.inUse))
                  archive files: \(archiveBytes / builds) bytes per build (gzip)
                """)
        }
    }
}
