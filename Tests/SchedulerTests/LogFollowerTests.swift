import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import Logging
@testable import Scheduler
import Synchronization
import Testing

/// Followers and readers of a log whose chunks the archiver moves and deletes under them,
/// and the archiver running as the leader does, against a real etcd.
@Suite("Log follower and archiver races")
struct LogFollowerTests {
    typealias Setup = LogArchiverTests.Setup

    static func follow(_ s: Setup, _ id: String, from view: LogView? = nil) async throws -> [String] {
        var out: [String] = []
        for try await lines in LogFollower(store: s.store, build: id, logger: Logger(label: "test")).lines(from: view) { out += lines }
        return out
    }

    @Test("a follower whose chunks were archived and deleted while its watch was away goes on from the archive, without a line twice or lost")
    func followerGoesOnFromTheArchive() async throws {
        try await withEtcd { _, etcd in
            let s = try Setup(etcd)
            var b = LogArchiverTests.build(.running)
            let a = LogArchiverTests.attempt(4, tag: "A")
            try await s.write(b, chunks: a)
            // The follower read the log this far, then its watch fell behind.
            let seen = try await s.store.logView(of: b.id)
            #expect(seen.lines.count == 12)
            // Meanwhile the build ended, its pipeline ran, and its whole log went to the archive.
            b.status = .succeeded
            b.deploy = PipelineRun(run: 1, pipeline: [], trigger: "build succeeded")
            b.deploy!.status = .succeeded
            let rest = a + [(name: "001-00000004", lines: ["B 4"]), (name: "p001-00000000", lines: ["B p1"])]
            try await s.write(b, chunks: rest, end: true)
            #expect(try await s.archiver.pass(b.id, fence: []) == .archived(lines: 14, deleted: 6))
            // A second run started and wrote its first line; etcd compacted the revision the follower was at.
            b = try await s.record(b.id)
            b.deploy = PipelineRun(run: 2, pipeline: [], trigger: "api")
            b.deploy!.status = .running
            try await s.write(b, chunks: [(name: "p002-00000000", lines: ["C 0"])])
            try await etcd.compact(revision: try await etcd.status())

            let id = b.id
            let followed = Task { try await Self.follow(s, id, from: seen) }
            // The run ends as PipelineService ends it: the record, then the last line.
            try await waitUntil(etcd, prefix: s.keys.logs(of: b.id)) { $0.count == 1 }
            b.deploy!.status = .succeeded
            _ = try await etcd.put(s.keys.build(b.id), try KilnJSON.encode(b))
            _ = try await etcd.put(s.keys.logs(of: b.id) + "p002-00000001", try KilnJSON.encode(LogChunk(seq: 1, lines: ["C 1"], end: true)))
            let out = try await withTimeout(.seconds(30), waitingFor: "the follower's end") { try await followed.value }
            let expected = a.flatMap(\.lines) + ["B 4", "B p1", "C 0", "C 1"]
            #expect(out == expected)
            #expect(try await s.store.log(of: b.id) == expected)
        }
    }

    @Test("readers, followers and the archiver at once while a pipeline writes its last lines: each read is the log's start, no line twice, none lost")
    func readersDuringArchiving() async throws {
        try await withEtcd(timeout: .seconds(120)) { _, etcd in
            let s = try Setup(etcd)
            var b = LogArchiverTests.build(.succeeded)
            // The record says the run ended, and its lines are still coming (PipelineService
            // records a run's end before its last line): the archiver moves what is there, again and again.
            b.deploy = PipelineRun(run: 1, pipeline: [], trigger: "build succeeded")
            b.deploy!.status = .succeeded
            let attempt = LogArchiverTests.attempt(40, tag: "build")
            try await s.write(b, chunks: attempt)
            let id = b.id
            let written = 150
            let writing = Task {
                for i in 0..<written {
                    let chunk = LogChunk(seq: i, lines: ["run \(i).0", "run \(i).1"], end: i == written - 1 ? true : nil)
                    _ = try await etcd.put(s.keys.logs(of: id) + String(format: "p001-%08d", i), try KilnJSON.encode(chunk))
                }
            }
            let writerDone = Mutex(false)
            let archiving = Task {
                var passes = 0, moved = 0
                // Until a pass after the last line finds nothing left in etcd.
                while true {
                    let finished = writerDone.withLock { $0 }
                    let outcome = try await s.archiver.pass(id, fence: [])
                    if case .archived(_, let deleted) = outcome { passes += 1; moved += deleted }
                    if finished, outcome == .nothing("no chunk in etcd") { return (passes, moved) }
                }
            }
            let readers = Task {
                try await withThrowingTaskGroup(of: [[String]].self) { group in
                    for _ in 0..<3 {
                        group.addTask {
                            var reads: [[String]] = []
                            for _ in 0..<15 {
                                reads.append(try await s.store.log(of: id))
                                reads.append(try await Self.follow(s, id))
                            }
                            return reads
                        }
                    }
                    return try await group.reduce(into: []) { $0 += $1 }
                }
            }
            try await writing.value
            writerDone.withLock { $0 = true }
            let reads = try await readers.value
            let (passes, moved) = try await archiving.value
            #expect(try await s.chunkNames(id).isEmpty)
            let expected = attempt.flatMap(\.lines) + (0..<written).flatMap { ["run \($0).0", "run \($0).1"] }
            #expect(try await s.store.log(of: b.id) == expected)
            #expect(passes >= 2 && moved == 40 + written, "\(passes) passes moved \(moved) chunks")
            #expect(reads.count == 90)
            for read in reads {
                #expect(read == Array(expected.prefix(read.count)), "a read of \(read.count) lines is not the log's start: first difference at \(zip(read, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? read.count)")
            }
        }
    }

    @Test("the leader's archiver: finds ended builds at its start, archives each build as it ends, keeps the chunks while the archive is down and moves them once it is back")
    func leaderArchives() async throws {
        try await withEtcd(timeout: .seconds(120)) { _, etcd in
            let s = try Setup(etcd)
            // Ended before this leader's term: found by walking /kiln/logs/.
            let old = (0..<3).map { _ in LogArchiverTests.build(.failed) }
            for b in old { try await s.write(b, chunks: LogArchiverTests.attempt(5, tag: b.id), end: true) }
            var running = LogArchiverTests.build(.running)
            try await s.write(running, chunks: LogArchiverTests.attempt(2))
            let oldLogs = try await old.asyncMap { try await s.store.log(of: $0.id) }

            let term = try await etcd.put(s.keys.leader, "test")
            let leading = Task { await s.archiver.lead(fence: [.createRevision(s.keys.leader, .equal, term)]) }
            defer { leading.cancel() }
            for (b, log) in zip(old, oldLogs) {
                try await waitUntil(etcd, prefix: s.keys.logs(of: b.id)) { $0.isEmpty }
                #expect(try await s.store.log(of: b.id) == log)
            }
            #expect(try await s.chunkNames(running.id).count == 2, "a running build's log stays in etcd")

            // It ends as an agent ends it: the record and the end chunk in one transaction.
            running.status = .succeeded
            try await s.write(running, chunks: LogArchiverTests.attempt(3), end: true)
            let ended = try await s.store.log(of: running.id)
            try await waitUntil(etcd, prefix: s.keys.logs(of: running.id)) { $0.isEmpty }
            #expect(try await s.store.log(of: running.id) == ended)

            // The archive's folder becomes a file: a build that ends keeps its chunks and is served from etcd.
            let folder = s.dir.path("archive")
            let moved = s.dir.path("archive.away")
            try FileManager.default.moveItem(at: folder, to: moved)
            try Data("not a folder".utf8).write(to: folder)
            let late = LogArchiverTests.build(.succeeded)
            try await s.write(late, chunks: LogArchiverTests.attempt(4, tag: "late"), end: true)
            let lateLog = try await s.store.log(of: late.id)
            // Tried at 0, 0.1, 0.3, 0.7, 1.1 s (the archive's pauses): chunks still there after several failures.
            try await Task.sleep(for: .seconds(1.5))
            #expect(try await s.chunkNames(late.id).count == 4)
            #expect(try await s.record(late.id).logArchive == nil)
            #expect(try await s.store.log(of: late.id) == lateLog)
            // The folder is back: the next try moves them.
            try FileManager.default.removeItem(at: folder)
            try FileManager.default.moveItem(at: moved, to: folder)
            try await waitUntil(etcd, prefix: s.keys.logs(of: late.id), timeout: .seconds(10)) { $0.isEmpty }
            #expect(try await s.store.log(of: late.id) == lateLog)
            for (b, log) in zip(old, oldLogs) { #expect(try await s.store.log(of: b.id) == log) }
        }
    }
}

extension Sequence {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var out: [T] = []
        for e in self { out.append(try await transform(e)) }
        return out
    }
}
