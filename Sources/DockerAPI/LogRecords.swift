import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One record of a container's log as the engine keeps it, read with `timestamps=1`: a whole
/// line, or a piece of a long one (podman stores a line longer than conmon's buffer as
/// several "P" records; the API sends each as a frame without a newline).
public struct LogRecord: Sendable, Equatable {
    /// 1 stdout, 2 stderr (the frame header's first byte).
    public var stream: UInt8
    /// The engine's time of the record.
    public var time: LogTime
    /// The record's bytes after the timestamp; a newline at its end ends the line.
    public var text: [UInt8]

    public init(stream: UInt8, time: LogTime, text: [UInt8]) {
        self.stream = stream
        self.time = time
        self.text = text
    }

    /// A frame's payload, "<RFC 3339 time> <text>", as a record; nil when it does not start
    /// with a time. `previous`: the time text of the record before and its time, taken again
    /// when the text is the same (podman gives thousands of records one time) and updated.
    init?(stream: UInt8, payload: UnsafeBufferPointer<UInt8>, previous: inout (stamp: [UInt8], time: LogTime)?) {
        guard let base = payload.baseAddress, let found = memchr(base, 0x20, payload.count) else { return nil }
        let stamp = UnsafeBufferPointer(start: base, count: UnsafePointer(found.assumingMemoryBound(to: UInt8.self)) - base)
        let time: LogTime
        if let previous, previous.stamp.count == stamp.count, memcmp(previous.stamp, base, stamp.count) == 0 {
            time = previous.time
        } else {
            guard let parsed = LogTime(rfc3339: Array(stamp)) else { return nil }
            time = parsed
            previous = (Array(stamp), parsed)
        }
        self.init(stream: stream, time: time, text: Array(UnsafeBufferPointer(rebasing: payload[(stamp.count + 1)...])))
    }
}

/// A log record's time as the logs endpoint writes it: RFC 3339 with whole seconds (podman
/// 4.3, `time.RFC3339`) or with nanoseconds (dockerd, `RFC3339Nano`).
public struct LogTime: Sendable, Hashable, Comparable {
    public var seconds: Int64
    public var nanoseconds: Int32
    /// The text had a fraction of a second (dockerd's form).
    public var hadFraction: Bool

    public init(seconds: Int64, nanoseconds: Int32 = 0, hadFraction: Bool = false) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
        self.hadFraction = hadFraction
    }

    public static func == (a: LogTime, b: LogTime) -> Bool { a.seconds == b.seconds && a.nanoseconds == b.nanoseconds }
    public func hash(into hasher: inout Hasher) { hasher.combine(seconds); hasher.combine(nanoseconds) }
    public static func < (a: LogTime, b: LogTime) -> Bool { (a.seconds, a.nanoseconds) < (b.seconds, b.nanoseconds) }

    /// "2026-11-25T19:44:56Z", "…56+01:00", "…56.123456789Z"; nil for anything else.
    public init?(rfc3339 text: String) { self.init(rfc3339: Array(text.utf8)) }

    init?(rfc3339 b: [UInt8]) {
        func digits(_ from: Int, _ count: Int) -> Int64? {
            guard from + count <= b.count else { return nil }
            var v: Int64 = 0
            for c in b[from..<(from + count)] {
                guard c >= 48, c <= 57 else { return nil }
                v = v * 10 + Int64(c - 48)
            }
            return v
        }
        guard b.count >= 20, b[4] == UInt8(ascii: "-"), b[7] == UInt8(ascii: "-"), b[10] == UInt8(ascii: "T"),
              b[13] == UInt8(ascii: ":"), b[16] == UInt8(ascii: ":"),
              let year = digits(0, 4), let month = digits(5, 2), let day = digits(8, 2),
              let hour = digits(11, 2), let minute = digits(14, 2), let second = digits(17, 2),
              (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61
        else { return nil }
        var i = 19
        var nanos: Int64 = 0
        var fraction = false
        if b[i] == UInt8(ascii: ".") {
            i += 1
            var n = 0
            while i < b.count, b[i] >= 48, b[i] <= 57 {
                if n < 9 { nanos = nanos * 10 + Int64(b[i] - 48) }
                n += 1
                i += 1
            }
            guard n > 0 else { return nil }
            for _ in n..<max(n, 9) { nanos *= 10 }
            fraction = true
        }
        var offset: Int64 = 0
        if i == b.count - 1, b[i] == UInt8(ascii: "Z") {
        } else if i == b.count - 6, b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-"), b[i + 3] == UInt8(ascii: ":"),
                  let oh = digits(i + 1, 2), let om = digits(i + 4, 2) {
            offset = (oh * 3600 + om * 60) * (b[i] == UInt8(ascii: "-") ? -1 : 1)
        } else {
            return nil
        }
        let days = LogTime.daysFromCivil(year: year, month: month, day: day)
        self.init(seconds: days * 86400 + hour * 3600 + minute * 60 + second - offset, nanoseconds: Int32(nanos), hadFraction: fraction)
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    static func daysFromCivil(year: Int64, month: Int64, day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146097 + doe - 719468
    }

    /// One nanosecond earlier: the logs endpoint's `since` keeps records strictly after it.
    var justBefore: LogTime {
        nanoseconds > 0 ? LogTime(seconds: seconds, nanoseconds: nanoseconds - 1, hadFraction: hadFraction)
            : LogTime(seconds: seconds - 1, nanoseconds: 999_999_999, hadFraction: hadFraction)
    }

    /// This time as the `since` parameter the engine that wrote it reads exactly: podman parses
    /// RFC 3339 with nanoseconds (a decimal number it would read as a float, losing them);
    /// dockerd parses only "seconds.nanoseconds", as two integers.
    var sinceParameter: String {
        let nanos = String(nanoseconds)
        let padded = String(repeating: "0", count: 9 - nanos.count) + nanos
        if hadFraction { return "\(seconds).\(padded)" }
        var t = time_t(seconds)
        var parts = tm()
        gmtime_r(&t, &parts)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(padded)Z"
    }
}

/// Where the next read of a container's log (without follow) resumes, so that a series of
/// reads delivers every record once and in order. Pure: the caller reads, this decides.
///
/// Rules, in order:
/// 1. A read asks for the records after `since`: one nanosecond before the time of the last
///    record delivered. podman 4.3 writes times in whole seconds, so a read starts with every
///    record of that second again; the first `countAtLast` records of it were delivered and
///    are skipped (records of one second are contiguous in the log, in the order written).
/// 2. Within a read, a record is delivered once the next one has arrived. The last record of
///    a read made while the container runs is held back: podman reads its log file up to
///    where conmon is writing and sends a record cut off there as a whole line (its "tail"
///    reader; seen here as a number missing its last digits). It is delivered when a later
///    read has a record after it, or returns it unchanged as its last, or the container has
///    stopped (`endRead(final: true)`: conmon has written everything before it reports the exit).
/// 3. A record older than one before it in the same read (the clock was set back) cannot be
///    placed: it is skipped and counted in `outOfOrder`, for a note in the log.
public struct LogCursor: Sendable {
    /// The time of the last record delivered, and how many records of that time were delivered.
    private(set) var last: LogTime?
    private(set) var countAtLast = 0
    /// The newest time in the current read, and how many records of it this read has had.
    private var readNewest: LogTime?
    private var readCountAtNewest = 0
    private var held: (record: LogRecord, count: Int)?
    private var heldByLastRead: (record: LogRecord, count: Int)?
    public private(set) var outOfOrder = 0

    public init() {}

    /// The `since` parameter of the next read (nil: from the start).
    public var since: String? { last.map { $0.justBefore.sinceParameter } }

    /// A record is held back from the last read (read again soon, even without new output).
    public var isHolding: Bool { heldByLastRead != nil }

    public mutating func beginRead() {
        readNewest = nil
        readCountAtNewest = 0
        held = nil
    }

    /// The next record of the read: returns the record that is now complete, if any.
    public mutating func take(_ record: LogRecord) -> LogRecord? {
        if let newest = readNewest, record.time < newest {
            outOfOrder += 1
            return nil
        }
        if record.time == readNewest {
            readCountAtNewest += 1
        } else {
            readNewest = record.time
            readCountAtNewest = 1
        }
        if let last {
            if record.time < last { return nil }
            if record.time == last && readCountAtNewest <= countAtLast { return nil }
        }
        var complete: LogRecord?
        if let h = held { complete = deliver(h) }
        held = (record, readCountAtNewest)
        return complete
    }

    /// The read ended: the held record, if it may be delivered now.
    public mutating func endRead(final: Bool) -> LogRecord? {
        defer { held = nil }
        guard let h = held else {
            heldByLastRead = nil
            return nil
        }
        if final || (heldByLastRead.map { $0.count == h.count && $0.record == h.record } ?? false) {
            heldByLastRead = nil
            return deliver(h)
        }
        heldByLastRead = h
        return nil
    }

    private mutating func deliver(_ h: (record: LogRecord, count: Int)) -> LogRecord {
        last = h.record.time
        countAtLast = h.count
        return h.record
    }
}

/// Joins log records into lines, per stream (a long line comes in several records).
public struct LogLineAssembler: Sendable {
    private var stdout = LineSplitter()
    private var stderr = LineSplitter()

    public init() {}

    public mutating func add(_ record: LogRecord) -> [String] {
        record.stream == 2 ? stderr.feed(bytes: record.text) : stdout.feed(bytes: record.text)
    }

    /// What is left of unfinished lines, at the end of the output.
    public mutating func finish() -> [String] { stdout.finish() + stderr.finish() }
}

extension DockerClient {
    /// Reads a container's log once, without following, with timestamps, from after `since`
    /// (the engine's `since`: `LogCursor.since`), and hands each record to `body` in order.
    /// Throws when the log has no records (a container with a TTY sends bare bytes).
    public func readLogRecords(_ id: String, since: String?, _ body: (LogRecord) throws -> Void) async throws {
        let operation = "read the logs of container \(id)"
        var query = [("stdout", "1"), ("stderr", "1"), ("follow", "0"), ("timestamps", "1")]
        if let since { query.append(("since", since)) }
        let response = try await send(.GET, "/containers/\(escape(id))/logs", query: query, operation: operation, long: true)
        if response.status.code != 200 { _ = try await expect(response, [200], operation) }
        var frames = LogFrames()
        var previous: (stamp: [UInt8], time: LogTime)?
        for try await chunk in response.body {
            let framed = try frames.feed(chunk.readableBytesView) { stream, payload in
                guard let record = LogRecord(stream: stream, payload: payload, previous: &previous) else {
                    throw DockerError(operation, 200, "a log frame without a timestamp: \(String(decoding: payload.prefix(80), as: UTF8.self))")
                }
                try body(record)
            }
            if !framed {
                throw DockerError(operation, 200, "the log is not multiplexed (a container with a TTY): it cannot be read by records")
            }
        }
    }
}

/// The reads of one container's log without follow, each resuming where the last ended
/// (`LogCursor`), with the lines not finished yet and how long the last read took. Used by
/// one task at a time.
public struct ContainerLogReader: Sendable {
    public let id: String
    let docker: DockerClient
    let log: @Sendable (String) -> Void
    public private(set) var cursor = LogCursor()
    private var lines = LogLineAssembler()
    public private(set) var lastReadTook = Duration.zero

    /// `log` receives each line, in order, once.
    public init(id: String, docker: DockerClient, log: @escaping @Sendable (String) -> Void) {
        self.id = id
        self.docker = docker
        self.log = log
    }

    /// Reads what is new and delivers its complete lines; `final`: the container has stopped,
    /// so the rest (a record held back, a last line without a newline) goes too.
    public mutating func read(final: Bool) async throws {
        let start = ContinuousClock.now
        var cursor = self.cursor
        var lines = self.lines
        let log = self.log
        defer {
            self.cursor = cursor
            self.lines = lines
        }
        cursor.beginRead()
        try await docker.readLogRecords(id, since: cursor.since) { record in
            if let complete = cursor.take(record) { lines.add(complete).forEach(log) }
        }
        if let complete = cursor.endRead(final: final) { lines.add(complete).forEach(log) }
        if final { lines.finish().forEach(log) }
        lastReadTook = ContinuousClock.now - start
    }
}
