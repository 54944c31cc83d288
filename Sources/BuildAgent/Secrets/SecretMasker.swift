import Foundation
import KilnCore

/// Replaces every secret value a build received with `[masked]` in the text that reaches its
/// log and record, also when a value arrives in two pieces of a stream. Pure: no I/O.
///
/// Rules, in order:
/// 1. The values masked are the ones given (`BuildSecrets.maskedValues`) without the line
///    breaks at their ends (a file's last newline stays, so the line after it stays a line),
///    and each line of at least `SecretRules.minimumLength` characters of a value that spans
///    lines: a build that prints one line of a key shows that line masked. Empty values are
///    ignored.
/// 2. Every occurrence of every value is found, overlapping ones too. Occurrences that overlap
///    are replaced together by one `[masked]`, so a longer value is never half shown because a
///    shorter one inside it matched first, nor two overlapping values by either.
/// 3. `feed` passes text on as soon as no value can still begin in it: the longest end of the
///    text so far that is the beginning of some value is held back (at most the longest
///    value's length − 1 bytes) until the next piece, or `finish`. A value found whole across
///    that point is shown masked at once, and its bytes are kept (not shown again) so that a
///    value overlapping it in the next piece continues the same `[masked]` instead of showing
///    its own end.
/// Fed in any pieces, a text comes out exactly as `masked` gives it whole.
public struct SecretMasker: Sendable {
    public static let replacement = "[masked]"

    /// The values as bytes, longest first, without repeats.
    private let values: [[UInt8]]
    /// The first bytes of the values: where a value may begin.
    private let firstBytes: Set<UInt8>
    /// The text from where a value may still begin; its first `shown` bytes were passed on
    /// already, inside a `[masked]`.
    private var pending: [UInt8] = []
    private var shown = 0

    public init(values: [String]) {
        var all: Set<[UInt8]> = []
        for value in values.map({ $0.trimmingCharacters(in: .newlines) }) where !value.isEmpty {
            all.insert(Array(value.utf8))
            guard value.contains(where: \.isNewline) else { continue }
            for line in value.split(whereSeparator: \.isNewline) {
                let trimmed = line.trimmingCharacters(in: .whitespaces)
                if trimmed.utf8.count >= SecretRules.minimumLength { all.insert(Array(trimmed.utf8)) }
            }
        }
        self.values = all.sorted { $0.count != $1.count ? $0.count > $1.count : $0.lexicographicallyPrecedes($1) }
        self.firstBytes = Set(self.values.map { $0[0] })
    }

    /// Nothing to mask.
    public var isEmpty: Bool { values.isEmpty }

    /// Bytes held back for the next piece.
    public var heldBack: Int { pending.count - shown }

    /// `text` with every value masked, as one whole (no state kept).
    public func masked(_ text: String) -> String {
        guard !values.isEmpty else { return text }
        let bytes = Array(text.utf8)
        return Self.text(replacing: occurrences(in: bytes), in: bytes, from: 0, to: bytes.count)
    }

    /// The next piece of a stream: returns what may be shown now, masked.
    public mutating func feed(_ text: String) -> String {
        guard !values.isEmpty else { return text }
        pending.append(contentsOf: text.utf8)
        let found = occurrences(in: pending)
        // No value that goes on past the text so far begins before `keep`.
        let keep = pending.count - heldSuffix(pending)
        var cut = max(keep, shown)
        if let straddling = found.first(where: { $0.lowerBound < cut && $0.upperBound > cut }) { cut = straddling.upperBound }
        let out = Self.text(replacing: found, in: pending, from: shown, to: cut)
        pending.removeFirst(keep)
        shown = cut - keep
        return out
    }

    /// The end of the stream: everything held back, masked.
    public mutating func finish() -> String {
        defer {
            pending = []
            shown = 0
        }
        return Self.text(replacing: occurrences(in: pending), in: pending, from: shown, to: pending.count)
    }

    // MARK: internals

    /// Every occurrence of every value in `bytes`, overlapping ones merged, in order.
    private func occurrences(in bytes: [UInt8]) -> [Range<Int>] {
        var found: [Range<Int>] = []
        bytes.withUnsafeBufferPointer { b in
            guard let base = b.baseAddress else { return }
            for value in values where value.count <= b.count {
                value.withUnsafeBufferPointer { v in
                    var i = 0
                    let last = b.count - v.count
                    while i <= last {
                        guard let hit = memchr(base + i, Int32(v[0]), last - i + 1) else { break }
                        let at = UnsafePointer(hit.assumingMemoryBound(to: UInt8.self)) - base
                        if memcmp(base + at, v.baseAddress!, v.count) == 0 { found.append(at..<(at + v.count)) }
                        i = at + 1
                    }
                }
            }
        }
        found.sort { $0.lowerBound < $1.lowerBound }
        var merged: [Range<Int>] = []
        for r in found {
            if let last = merged.last, r.lowerBound < last.upperBound {
                merged[merged.count - 1] = last.lowerBound..<max(last.upperBound, r.upperBound)
            } else {
                merged.append(r)
            }
        }
        return merged
    }

    /// The length of the longest end of `bytes` that is the beginning (not the whole) of a
    /// value: where a value may yet begin.
    private func heldSuffix(_ bytes: [UInt8]) -> Int {
        guard let longest = values.first?.count, !bytes.isEmpty else { return 0 }
        let start = max(0, bytes.count - (longest - 1))
        for p in start..<bytes.count where firstBytes.contains(bytes[p]) {
            let tail = bytes[p...]
            if values.contains(where: { $0.count > tail.count && $0.starts(with: tail) }) { return bytes.count - p }
        }
        return 0
    }

    /// `bytes[from..<to]` with the occurrences in `ranges` masked. An occurrence that begins
    /// before `from` continues a `[masked]` already shown: its rest shows nothing more.
    private static func text(replacing ranges: [Range<Int>], in bytes: [UInt8], from: Int, to: Int) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(max(0, to - from))
        var at = from
        for r in ranges where r.upperBound > at {
            if r.lowerBound >= to { break }
            if r.lowerBound < at {
                at = r.upperBound
                continue
            }
            out.append(contentsOf: bytes[at..<r.lowerBound])
            out.append(contentsOf: replacement.utf8)
            at = r.upperBound
        }
        if at < to { out.append(contentsOf: bytes[at..<to]) }
        return String(decoding: out, as: UTF8.self)
    }
}
