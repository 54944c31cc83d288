import Foundation

/// The cap on one build attempt's log (`--max-log-size`), as a pure state: what to keep of
/// each line, and the one note that says where the log was cut.
///
/// Rules, in order:
/// 1. Every line is first cut into pieces of at most `LogChunks.maxPiece` bytes (`LogChunks.pieces`),
///    so no line can outgrow a chunk; nothing of it is lost.
/// 2. The agent's own lines (step marks, the outcome) are always kept: there are a few dozen
///    of them, and the reader needs them most after a cut.
/// 3. A piece of the build's output is kept while the bytes kept (pieces and their newlines,
///    the agent's lines included) stay within `limit`.
/// 4. The first output piece that does not fit is replaced by the cut note; it and every
///    output piece after it are counted as dropped.
/// 5. `summary` tells, at the end, how much was dropped (nil when nothing was).
struct LogCap: Sendable {
    let limit: Int
    private(set) var keptBytes = 0
    private(set) var droppedBytes = 0
    private(set) var droppedLines = 0
    private(set) var isCut = false

    init(limit: Int) { self.limit = limit }

    /// What to append for one line of the build's output.
    mutating func output(_ line: String) -> [String] {
        var kept: [String] = []
        var dropped = false
        for piece in LogChunks.pieces(of: line) {
            let size = piece.utf8.count + 1
            if !isCut && keptBytes + size <= limit {
                keptBytes += size
                kept.append(piece)
                continue
            }
            if !isCut {
                isCut = true
                let note = "kiln: the log is cut here: it reached its cap of \(LogCap.describe(limit)) (the agent's --max-log-size); the build goes on, its output from here on is dropped"
                keptBytes += note.utf8.count + 1
                kept.append(note)
            }
            droppedBytes += size
            dropped = true
        }
        if dropped { droppedLines += 1 }
        return kept
    }

    /// What to append for a line of the agent's own.
    mutating func agent(_ line: String) -> [String] {
        let pieces = LogChunks.pieces(of: line)
        keptBytes += pieces.reduce(0) { $0 + $1.utf8.count + 1 }
        return pieces
    }

    /// The closing note of a cut log.
    var summary: String? {
        guard isCut else { return nil }
        return "kiln: \(LogCap.describe(droppedBytes)) of output (\(droppedLines) line\(droppedLines == 1 ? "" : "s")) past the log's cap of \(LogCap.describe(limit)) were dropped"
    }

    /// "1 MiB", "1.5 MiB", "64 KiB", "300 bytes".
    static func describe(_ bytes: Int) -> String {
        func trimmed(_ value: Double) -> String {
            value == value.rounded() ? String(Int(value)) : String(format: "%.1f", value)
        }
        if bytes >= 1 << 20 { return "\(trimmed(Double(bytes) / Double(1 << 20))) MiB" }
        if bytes >= 1 << 10 { return "\(trimmed(Double(bytes) / Double(1 << 10))) KiB" }
        return "\(bytes) bytes"
    }
}

/// How log lines are packed into the chunks written to etcd, so that no write comes near
/// etcd's request limit (1.5 MiB by default): a line is cut into pieces of at most
/// `maxPiece` bytes, and a chunk holds pieces whose JSON, at its worst, stays within `budget`;
/// a single piece of control characters alone may take 6 × 64 KiB. With the gateway's base64
/// (a third more) no request carries more than about 520 KiB.
enum LogChunks {
    static let maxPiece = 64 << 10
    static let budget = 256 << 10

    /// `line` cut into pieces of at most `maxPiece` bytes, at character boundaries.
    static func pieces(of line: String) -> [String] {
        let bytes = Array(line.utf8)
        guard bytes.count > maxPiece else { return [line] }
        var out: [String] = []
        var start = 0
        while start < bytes.count {
            var end = min(start + maxPiece, bytes.count)
            // Not inside a UTF-8 sequence: step back over continuation bytes (10xxxxxx).
            while end < bytes.count, end > start + 1, bytes[end] & 0xC0 == 0x80 { end -= 1 }
            out.append(String(decoding: bytes[start..<end], as: UTF8.self))
            start = end
        }
        return out
    }

    /// The most bytes `line` can take as a JSON string: a control character is escaped as
    /// `\u00XX` (6 bytes), a quote, backslash or slash as 2, anything else as itself.
    static func encodedSize(_ line: String) -> Int {
        var n = 2
        for b in line.utf8 {
            if b < 0x20 { n += 6 } else if b == 0x22 || b == 0x5C || b == 0x2F { n += 2 } else { n += 1 }
        }
        return n + 1  // the comma between lines
    }

    /// `lines` grouped in order into chunks of at most `budget` encoded bytes each (a line
    /// longer than the budget alone, which `pieces` rules out, gets a chunk of its own).
    static func group(_ lines: [String]) -> [[String]] {
        var chunks: [[String]] = []
        var current: [String] = []
        var size = 0
        for line in lines {
            let s = encodedSize(line)
            if !current.isEmpty && size + s > budget {
                chunks.append(current)
                current = []
                size = 0
            }
            current.append(line)
            size += s
        }
        if !current.isEmpty { chunks.append(current) }
        return chunks
    }
}
