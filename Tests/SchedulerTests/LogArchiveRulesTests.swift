import Etcd
import Foundation
import KilnCore
@testable import Scheduler
import Testing

/// The pure parts of the log archive: the archiver's queue and plan, the follower's state,
/// the record's mark, chunk names, gzip.
@Suite("Log archive rules")
struct LogArchiveRulesTests {
    let t0 = ContinuousClock.now

    @Test("queue: due at once in the order offered; a failing build backs off alone, doubling to the cap; a failing archive pauses every build")
    func queue() {
        var q = ArchiveQueue(retryAfter: .seconds(5), retryAtMost: .seconds(30))
        #expect(q.take(now: t0) == nil)
        q.offer("b2", now: t0)
        q.offer("b1", now: t0)
        q.offer("b2", now: t0 + .seconds(2))  // queued already: keeps its place
        q.offer("b0", now: t0 + .seconds(1))
        #expect(q.count == 3)
        #expect(q.take(now: t0 + .seconds(2)) == "b2")
        #expect(q.take(now: t0 + .seconds(2)) == "b1")
        #expect(q.take(now: t0 + .seconds(2)) == "b0")
        #expect(q.take(now: t0 + .seconds(2)) == nil)

        // Rule 3: 5, 10, 20, 30, 30 s, for b1 alone.
        var now = t0
        q.offer("b3", now: now)
        for expected in [5, 10, 20, 30, 30] {
            #expect(q.failed("b1", now: now) == .seconds(expected))
            // Rule 1: a new end chunk of a failing build does not bring it forward.
            q.offer("b1", now: now)
            #expect(q.take(now: now + .seconds(expected) - .milliseconds(1)) == (expected == 5 ? "b3" : nil), "others go on meanwhile")
            now = now + .seconds(expected)
            #expect(q.take(now: now) == "b1")
        }
        #expect(q.failures(of: "b1") == 5 && q.failing == 1)
        q.succeeded("b1")
        #expect(q.failing == 0)
        #expect(q.failed("b1", now: now) == .seconds(5), "a success starts the backoff over")

        // Rule 4: the archive fails: nothing at all is taken until the pause ends, then that build first.
        var a = ArchiveQueue(retryAfter: .seconds(5), retryAtMost: .seconds(30))
        for b in ["x1", "x2", "x3"] { a.offer(b, now: t0) }
        #expect(a.take(now: t0) == "x1")
        #expect(a.archiveFailed("x1", now: t0) == .seconds(5))
        a.offer("x4", now: t0)
        #expect(a.take(now: t0 + .seconds(4)) == nil)
        #expect(a.take(now: t0 + .seconds(5)) == "x2")
        #expect(a.archiveFailed("x2", now: t0 + .seconds(5)) == .seconds(10), "the archive's failures in a row double the pause")
        #expect(a.take(now: t0 + .seconds(14)) == nil)
        #expect(a.take(now: t0 + .seconds(15)) == "x3")
        a.succeeded("x3")
        #expect(a.archiveFailures == 0 && a.pausedUntil == nil)
        // Rule 6: every build is still there.
        var left: [String] = []
        while let b = a.take(now: t0 + .seconds(15)) { left.append(b) }
        #expect(Set(left) == ["x1", "x2", "x4"])
    }

    @Test("plan: nothing before the build and its run have ended; archive what follows the mark; delete what the mark covers")
    func plan() {
        var build = Build(id: "b1", project: "p", ref: "main")
        #expect(ArchivePlan.decide(build: nil, chunks: ["001-00000000"]) == .nothing("no build record"))
        #expect(ArchivePlan.decide(build: build, chunks: ["001-00000000"]) == .nothing("the build has not ended"))
        build.status = .succeeded
        build.deploy = PipelineRun(run: 1, pipeline: [], trigger: "build succeeded")
        #expect(ArchivePlan.decide(build: build, chunks: ["001-00000000"]) == .nothing("its pipeline run 1 is pending"))
        build.deploy?.status = .running
        #expect(ArchivePlan.decide(build: build, chunks: ["001-00000000"]) == .nothing("its pipeline run 1 is running"))
        build.deploy?.status = .failed
        let all = ["001-00000000", "001-00000001", "001-99999999", "002-00000000", "p001-00000000"]
        #expect(ArchivePlan.decide(build: build, chunks: all) == .archive(fresh: all, leftover: []))
        #expect(ArchivePlan.decide(build: build, chunks: []) == .nothing("no chunk in etcd"))

        build.logArchive = ArchivedLog(archivedAt: Date(), lines: 12, through: "002-00000000")
        #expect(ArchivePlan.decide(build: build, chunks: all) == .archive(fresh: ["p001-00000000"], leftover: Array(all.prefix(4))))
        #expect(ArchivePlan.decide(build: build, chunks: Array(all.prefix(4))) == .delete(Array(all.prefix(4))))
        // A mark that is not of the form Kiln writes is ignored: every chunk is archived again.
        build.logArchive = ArchivedLog(archivedAt: Date(), lines: 12, through: "zzz")
        #expect(ArchivePlan.decide(build: build, chunks: all) == .archive(fresh: all, leftover: []))
    }

    @Test("the record's mark: trusted on a final build with a chunk name of Kiln's form only")
    func mark() {
        for good in ["001-00000000", "p001-00000003", "1000-99999999", "p1234-00000001"] { #expect(ArchivedLog.isChunkName(good), "\(good)") }
        for bad in ["", "001", "01-00000000", "001-0000000", "001-000000000", "p-00000000", "001-0000000a", "../001-00000000", "q001-00000000", "001-00000000/x", "p001-00000000\n"] {
            #expect(!ArchivedLog.isChunkName(bad), "\(bad)")
        }
        var build = Build(id: "b1", project: "p", ref: "main")
        let mark = ArchivedLog(archivedAt: Date(), lines: 3, through: "001-00000002")
        #expect(!mark.isPlausible(on: build), "a running build's record may be the agent's: its mark is not trusted")
        build.status = .failed
        #expect(mark.isPlausible(on: build))
        #expect(!ArchivedLog(archivedAt: Date(), lines: -1, through: "001-00000002").isPlausible(on: build))
    }

    @Test("chunk names sort as etcd's keys do; keys split into build and chunk")
    func names() {
        #expect(LogNames.isAfter("001-00000001", nil))
        #expect(LogNames.isAfter("001-00000001", "001-00000000"))
        #expect(!LogNames.isAfter("001-00000000", "001-00000000"))
        #expect(LogNames.isAfter("p001-00000000", "999-99999999"))
        #expect(LogNames.isAfter("002-00000000", "001-99999999"))
        #expect(LogNames.resume(after: "/kiln/logs/b1/001-00000000") == "/kiln/logs/b1/001-00000000\0")
        #expect(LogNames.resume(after: "/kiln/logs/b1/\u{FFFD}x") == "/kiln/logs/b10", "past every key of that ASCII start")
        let split = LogNames.split("/kiln/logs/b1/001-00000002", under: "/kiln/logs/")
        #expect(split?.build == "b1" && split?.name == "001-00000002")
        #expect(LogNames.split("/kiln/logs/b1", under: "/kiln/logs/") == nil)
        #expect(LogNames.split("/kiln/logs//x", under: "/kiln/logs/") == nil)
        #expect(LogNames.split("/kiln/builds/b1/x", under: "/kiln/logs/") == nil)
    }

    func view(_ lines: [String], through: String?) -> LogView { LogView(lines: lines, through: through, revision: 1) }

    @Test("follower: a view shows what is new, a chunk up to the last one shown is skipped, a later view goes on where it stood")
    func follower() {
        var s = LogFollowState()
        #expect(s.view(view(["a", "b"], through: "001-00000001")) == ["a", "b"])
        // Rule 2: the watch began before the view's last read: these were shown already.
        #expect(s.chunk(named: "001-00000000", lines: ["a"]) == [])
        #expect(s.chunk(named: "001-00000001", lines: ["b"]) == [])
        #expect(s.chunk(named: "001-00000002", lines: ["c", "d"]) == ["c", "d"])
        #expect(s.shown == 4 && s.through == "001-00000002")
        // Rule 1: after a gap, chunks 3 and p001-0 were archived and deleted: the view (the
        // archive's lines, then what is left in etcd) shows exactly the lines not shown yet.
        #expect(s.view(view(["a", "b", "c", "d", "e", "f", "g"], through: "p001-00000001")) == ["e", "f", "g"])
        #expect(s.chunk(named: "p001-00000001", lines: ["g"]) == [])
        #expect(s.chunk(named: "p001-00000002", lines: ["h"]) == ["h"])
        // Rule 3: an older view shows nothing and keeps the place.
        #expect(s.view(view(["a", "b"], through: "001-00000001")) == [])
        #expect(s.shown == 8 && s.through == "p001-00000002")
        var empty = LogFollowState()
        #expect(empty.view(view([], through: nil)) == [])
        #expect(empty.chunk(named: "001-00000000", lines: ["x"]) == ["x"])
    }

    @Test("gzip: round trips; a cut, damaged or endless file is refused; members one after the other are read")
    func gzip() throws {
        for size in [0, 1, 1000, 300_000] {
            let data = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 / 7) }
            let packed = try Gzip.compress(data)
            #expect(packed.prefix(2) == [0x1F, 0x8B], "a gzip header, so zcat reads the files")
            #expect(try Gzip.decompress(packed, limit: 1 << 20) == data)
        }
        let text = Array(String(repeating: "[INFO] Downloading from mirror\n", count: 5000).utf8)
        let packed = try Gzip.compress(text)
        #expect(packed.count < text.count / 20, "\(packed.count) of \(text.count)")
        #expect(try Gzip.decompress(packed + packed, limit: 1 << 20) == text + text)
        #expect(throws: (any Error).self) { try Gzip.decompress(Array(packed.prefix(packed.count / 2)), limit: 1 << 20) }
        #expect(throws: (any Error).self) { try Gzip.decompress(Array(packed.dropLast(4)), limit: 1 << 20) }
        var damaged = packed
        damaged[damaged.count / 2] ^= 0xFF
        #expect(throws: (any Error).self) { try Gzip.decompress(damaged, limit: 1 << 20) }
        var badChecksum = packed
        badChecksum[badChecksum.count - 6] ^= 0x01  // the CRC-32 in the trailer
        #expect(throws: (any Error).self) { try Gzip.decompress(badChecksum, limit: 1 << 20) }
        #expect(throws: (any Error).self) { try Gzip.decompress([], limit: 1 << 20) }
        #expect(throws: (any Error).self) { try Gzip.decompress(Array("not gzip at all".utf8), limit: 1 << 20) }
        #expect(throws: (any Error).self) { try Gzip.decompress(packed + [1, 2, 3], limit: 1 << 20) }
        // A small file that inflates far: refused at the limit, not read to its end.
        let bomb = try Gzip.compress([UInt8](repeating: 0, count: 8 << 20))
        #expect(bomb.count < 64 << 10)
        #expect(throws: (any Error).self) { try Gzip.decompress(bomb, limit: 1 << 20) }
    }
}
