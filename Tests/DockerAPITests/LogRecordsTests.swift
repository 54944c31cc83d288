@testable import DockerAPI
import Foundation
import Testing

@Suite("Container logs read again without follow: record times and the cursor")
struct LogRecordsTests {
    @Test("RFC 3339 times as podman (whole seconds) and dockerd (nanoseconds) write them")
    func times() throws {
        let podman = try #require(LogTime(rfc3339: "2026-11-25T19:44:56Z"))
        #expect(podman.seconds == 1_795_635_896 && podman.nanoseconds == 0 && !podman.hadFraction)
        #expect(LogTime(rfc3339: "2026-11-25T20:44:56+01:00") == podman)
        #expect(LogTime(rfc3339: "2026-11-25T14:14:56-05:30") == podman)
        let docker = try #require(LogTime(rfc3339: "2026-11-25T19:44:56.0123Z"))
        #expect(docker.seconds == podman.seconds && docker.nanoseconds == 12_300_000 && docker.hadFraction)
        #expect(LogTime(rfc3339: "1970-01-01T00:00:00Z")?.seconds == 0)
        #expect(LogTime(rfc3339: "2000-02-29T00:00:00Z")?.seconds == 951_782_400)
        for bad in ["", "2026-11-25 19:44:56Z", "2026-11-25T19:44:56", "2026-11-25T19:44:56.Z", "2026-13-25T19:44:56Z", "2026-11-25T19:44:56Zjunk", "x026-11-25T19:44:56Z"] {
            #expect(LogTime(rfc3339: bad) == nil, "\(bad)")
        }
    }

    @Test("since is one nanosecond before, in the form the engine that wrote the time parses exactly")
    func since() throws {
        let podman = try #require(LogTime(rfc3339: "2026-01-01T00:00:00Z"))
        #expect(podman.justBefore.sinceParameter == "2025-12-31T23:59:59.999999999Z")
        let docker = try #require(LogTime(rfc3339: "2026-01-01T00:00:00.000000005Z"))
        #expect(docker.justBefore.sinceParameter == "1767225600.000000004")
    }

    static func record(_ second: Int64, _ text: String, stream: UInt8 = 1) -> LogRecord {
        LogRecord(stream: stream, time: LogTime(seconds: second), text: Array((text + "\n").utf8))
    }

    /// One read: the records the cursor lets through, and its `since` before the read.
    static func read(_ cursor: inout LogCursor, _ records: [LogRecord], final: Bool) -> (since: String?, delivered: [String]) {
        let since = cursor.since
        cursor.beginRead()
        var out = records.compactMap { cursor.take($0) }
        if let last = cursor.endRead(final: final) { out.append(last) }
        return (since, out.map { String(decoding: $0.text.dropLast(), as: UTF8.self) })
    }

    @Test("reads resume after the last record delivered: records of the same second are counted, none twice, none lost")
    func resume() {
        var cursor = LogCursor()
        // Read 1 while running: the last record (c) is held back.
        var r = Self.read(&cursor, [Self.record(10, "a"), Self.record(10, "b"), Self.record(10, "c")], final: false)
        #expect(r.since == nil && r.delivered == ["a", "b"])
        #expect(cursor.isHolding)
        // Read 2 from second 10 again (since just before it): a and b skipped, c now followed by d.
        r = Self.read(&cursor, [Self.record(10, "a"), Self.record(10, "b"), Self.record(10, "c"), Self.record(10, "d"), Self.record(11, "e")], final: false)
        #expect(r.since == "1970-01-01T00:00:09.999999999Z")
        #expect(r.delivered == ["c", "d"])
        // Read 3 returns e unchanged as its last record: it was whole, delivered now.
        r = Self.read(&cursor, [Self.record(10, "a"), Self.record(10, "b"), Self.record(10, "c"), Self.record(10, "d"), Self.record(11, "e")], final: false)
        #expect(r.since == "1970-01-01T00:00:09.999999999Z" && r.delivered == ["e"])
        #expect(!cursor.isHolding)
        // Nothing new: nothing delivered, nothing held.
        r = Self.read(&cursor, [Self.record(11, "e")], final: false)
        #expect(r.since == "1970-01-01T00:00:10.999999999Z" && r.delivered.isEmpty && !cursor.isHolding)
        // The final read after the container stopped delivers its last record at once.
        r = Self.read(&cursor, [Self.record(11, "e"), Self.record(11, "f"), Self.record(12, "g")], final: true)
        #expect(r.delivered == ["f", "g"])
    }

    @Test("a record cut off at the end of a read (the engine read while conmon wrote) is replaced by its whole version")
    func tornRecord() {
        var cursor = LogCursor()
        var r = Self.read(&cursor, [Self.record(5, "1"), Self.record(5, "12")], final: false)
        #expect(r.delivered == ["1"])
        // The same place now holds the whole record: still the last, so held until it is stable.
        r = Self.read(&cursor, [Self.record(5, "1"), Self.record(5, "123")], final: false)
        #expect(r.delivered.isEmpty && cursor.isHolding)
        r = Self.read(&cursor, [Self.record(5, "1"), Self.record(5, "123")], final: false)
        #expect(r.delivered == ["123"])
        r = Self.read(&cursor, [Self.record(5, "1"), Self.record(5, "123"), Self.record(5, "124")], final: true)
        #expect(r.delivered == ["124"])
    }

    @Test("a time earlier than one before it cannot be placed: skipped and counted")
    func clockSetBack() {
        var cursor = LogCursor()
        let r = Self.read(&cursor, [Self.record(20, "a"), Self.record(19, "b"), Self.record(20, "c")], final: true)
        #expect(r.delivered == ["a", "c"])
        #expect(cursor.outOfOrder == 1)
    }

    @Test("records become lines per stream; a long line comes in pieces without newlines")
    func assemble() {
        var lines = LogLineAssembler()
        let t = LogTime(seconds: 1)
        var out: [String] = []
        out += lines.add(LogRecord(stream: 1, time: t, text: Array("par".utf8)))
        out += lines.add(LogRecord(stream: 2, time: t, text: Array("err\n".utf8)))
        out += lines.add(LogRecord(stream: 1, time: t, text: Array("tial\n".utf8)))
        out += lines.add(LogRecord(stream: 1, time: t, text: Array("no end".utf8)))
        out += lines.finish()
        #expect(out == ["err", "partial", "no end"])
        var previous: (stamp: [UInt8], time: LogTime)?
        func parse(_ payload: String) -> LogRecord? {
            Array(payload.utf8).withUnsafeBufferPointer { LogRecord(stream: 1, payload: $0, previous: &previous) }
        }
        #expect(parse("2026-11-25T19:44:56Z a b\n") == LogRecord(stream: 1, time: LogTime(seconds: 1_795_635_896), text: Array("a b\n".utf8)))
        #expect(parse("2026-11-25T19:44:56Z ") == LogRecord(stream: 1, time: LogTime(seconds: 1_795_635_896), text: []))
        #expect(parse("2026-11-25T19:44:57Z c\n")?.time == LogTime(seconds: 1_795_635_897))
        #expect(parse("no time here\n") == nil)
        #expect(parse("2026-11-25T19:44:57Z") == nil)
    }
}
