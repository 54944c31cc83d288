/// The rewrite `kiln oci-runtime` makes to an OCI bundle's `config.json` before the real
/// runtime (runc) reads it: what podman 4.3's compat `POST /build` cannot ask for its `RUN`
/// steps (it refuses `no-new-privileges` and has no pids parameter), given to every container
/// of the engine instead.
///
/// Rules, in order:
/// 1. `process.noNewPrivileges` becomes `true` (a setuid binary or file capability then gains
///    nothing at exec).
/// 2. `linux.resources.pids.limit` becomes `pidsLimit` when it is absent, null, not an integer,
///    0 or negative (unlimited), or above `pidsLimit`; a lower limit is kept. Missing `linux`,
///    `resources` or `pids` objects are added.
/// 3. Every other byte stays as it was: the document is edited in place, not decoded and
///    encoded again, so numbers beyond 2^53, key order and spacing survive.
///
/// runc decodes with Go's encoding/json, which matches keys case-insensitively (and folds `ſ`
/// to `s`, `K` to `k`) and lets the last of duplicate keys win; so every member whose key
/// folds to a key above is rewritten, and keys are unescaped before they are compared.
/// A document this cannot read is an error: the container must not start unconfined.
public enum OCIRuntimeConfig {
    public struct Invalid: Error, CustomStringConvertible {
        public let description: String
    }

    /// `config` rewritten by the rules above; nil when it already holds them.
    public static func confine(_ config: [UInt8], pidsLimit: Int) throws -> [UInt8]? {
        let reader = JSONScan(bytes: config)
        let root = try reader.object(at: reader.skipSpace(0))
        guard reader.skipSpace(root.end) == config.count else { throw Invalid(description: "config.json: text after the top-level object") }
        var edits: [(range: Range<Int>, text: String)] = []

        for process in root.members("process") {
            guard config[process.value.lowerBound] != UInt8(ascii: "n") else { continue }  // null: runc refuses it itself
            let object = try reader.object(at: process.value.lowerBound)
            let flags = object.members("nonewprivileges")
            if flags.isEmpty { edits.append(object.insertion(#""noNewPrivileges":true"#)) }
            for flag in flags where reader.text(flag.value) != "true" { edits.append((flag.value, "true")) }
        }

        // linux → resources → pids → limit: an object added where one is missing or null.
        let path = ["linux", "resources", "pids", "limit"]
        func nested(_ keys: ArraySlice<String>) -> String {
            guard let key = keys.first else { return "\(pidsLimit)" }
            return #"{"\#(key)":\#(nested(keys.dropFirst()))}"#
        }
        func descend(_ object: JSONScan.Object, level: Int) throws {
            let found = object.members(path[level])
            if found.isEmpty { edits.append(object.insertion(#""\#(path[level])":\#(nested(path[(level + 1)...]))"#)) }
            for member in found {
                if level == path.count - 1 {
                    let limit = Int(reader.text(member.value)) ?? 0
                    if limit <= 0 || limit > pidsLimit { edits.append((member.value, "\(pidsLimit)")) }
                } else if reader.text(member.value) == "null" {
                    edits.append((member.value, nested(path[(level + 1)...])))
                } else {
                    try descend(try reader.object(at: member.value.lowerBound), level: level + 1)
                }
            }
        }
        try descend(root, level: 0)

        guard !edits.isEmpty else { return nil }
        var out = config
        for edit in edits.sorted(by: { $0.range.lowerBound > $1.range.lowerBound }) {
            out.replaceSubrange(edit.range, with: Array(edit.text.utf8))
        }
        return out
    }
}

/// Just enough of a JSON reader to find members and the byte ranges of their values.
struct JSONScan {
    let bytes: [UInt8]

    struct Member {
        /// Unescaped and folded as Go's encoding/json compares keys.
        let key: String
        let value: Range<Int>
    }

    struct Object {
        let start: Int  // the '{'
        let end: Int    // one past the '}'
        let list: [Member]

        func members(_ key: String) -> [Member] { list.filter { $0.key == key } }

        /// An edit that adds `member` as the object's first member.
        func insertion(_ member: String) -> (range: Range<Int>, text: String) {
            ((start + 1)..<(start + 1), list.isEmpty ? member : member + ",")
        }
    }

    func text(_ range: Range<Int>) -> String { String(decoding: bytes[range], as: UTF8.self) }

    func skipSpace(_ from: Int) -> Int {
        var i = from
        while i < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[i]) { i += 1 }
        return i
    }

    func fail(_ what: String, _ at: Int) -> OCIRuntimeConfig.Invalid {
        OCIRuntimeConfig.Invalid(description: "config.json: \(what) at byte \(at)")
    }

    func object(at start: Int) throws -> Object {
        guard start < bytes.count, bytes[start] == UInt8(ascii: "{") else { throw fail("an object expected", start) }
        var list: [Member] = []
        var i = skipSpace(start + 1)
        if i < bytes.count, bytes[i] == UInt8(ascii: "}") { return Object(start: start, end: i + 1, list: []) }
        while true {
            let (key, keyEnd) = try string(at: i)
            i = skipSpace(keyEnd)
            guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw fail("':' expected", i) }
            let valueStart = skipSpace(i + 1)
            let valueEnd = try value(at: valueStart)
            list.append(Member(key: Self.fold(key), value: valueStart..<valueEnd))
            i = skipSpace(valueEnd)
            guard i < bytes.count else { throw fail("unterminated object", i) }
            if bytes[i] == UInt8(ascii: "}") { return Object(start: start, end: i + 1, list: list) }
            guard bytes[i] == UInt8(ascii: ",") else { throw fail("',' or '}' expected", i) }
            i = skipSpace(i + 1)
        }
    }

    /// One past the end of the value that starts at `start`.
    func value(at start: Int) throws -> Int {
        guard start < bytes.count else { throw fail("a value expected", start) }
        switch bytes[start] {
        case UInt8(ascii: "{"): return try object(at: start).end
        case UInt8(ascii: "\""): return try string(at: start).end
        case UInt8(ascii: "["):
            var i = skipSpace(start + 1)
            if i < bytes.count, bytes[i] == UInt8(ascii: "]") { return i + 1 }
            while true {
                i = skipSpace(try value(at: i))
                guard i < bytes.count else { throw fail("unterminated array", i) }
                if bytes[i] == UInt8(ascii: "]") { return i + 1 }
                guard bytes[i] == UInt8(ascii: ",") else { throw fail("',' or ']' expected", i) }
                i = skipSpace(i + 1)
            }
        default:
            // true, false, null or a number: the run of characters that may form one.
            var i = start
            while i < bytes.count, Self.scalarBytes.contains(bytes[i]) { i += 1 }
            let word = text(start..<i)
            guard i > start, ["true", "false", "null"].contains(word) || Self.isNumber(word) else { throw fail("a value expected", start) }
            return i
        }
    }

    /// The string at `start`, unescaped, and one past its closing quote.
    func string(at start: Int) throws -> (value: String, end: Int) {
        guard start < bytes.count, bytes[start] == UInt8(ascii: "\"") else { throw fail("a string expected", start) }
        var scalars = String.UnicodeScalarView()
        var raw: [UInt8] = []
        var i = start + 1
        func flush() {
            scalars.append(contentsOf: String(decoding: raw, as: UTF8.self).unicodeScalars)
            raw.removeAll()
        }
        while i < bytes.count {
            let b = bytes[i]
            if b == UInt8(ascii: "\"") {
                flush()
                return (String(scalars), i + 1)
            }
            guard b >= 0x20 else { throw fail("a control character in a string", i) }
            guard b == UInt8(ascii: "\\") else { raw.append(b); i += 1; continue }
            guard i + 1 < bytes.count else { break }
            let escape = bytes[i + 1]
            if let plain = Self.simpleEscapes[escape] {
                raw.append(plain)
                i += 2
            } else if escape == UInt8(ascii: "u"), i + 6 <= bytes.count, let code = UInt32(text((i + 2)..<(i + 6)), radix: 16) {
                flush()
                // A lone surrogate stands for U+FFFD, as Go reads it; a key holding one matches nothing here.
                scalars.append(Unicode.Scalar(code) ?? "\u{FFFD}")
                i += 6
            } else {
                throw fail("a bad escape in a string", i)
            }
        }
        throw fail("unterminated string", start)
    }

    static let scalarBytes = Set("truefalsn0123456789+-.eE".utf8)
    /// \" \\ \/ \b \f \n \r \t
    static let simpleEscapes: [UInt8: UInt8] = [0x22: 0x22, 0x5C: 0x5C, 0x2F: 0x2F, 0x62: 0x08, 0x66: 0x0C, 0x6E: 0x0A, 0x72: 0x0D, 0x74: 0x09]

    static func isNumber(_ s: String) -> Bool {
        s.first.map { $0 == "-" || $0.isNumber } == true && Double(s) != nil
    }

    /// Go's encoding/json compares keys with simple case folding: lower case, and `ſ` (U+017F)
    /// is `s`, the Kelvin sign `k` (lowercased already).
    static func fold(_ key: String) -> String {
        String(String.UnicodeScalarView(key.lowercased().unicodeScalars.map { $0 == "\u{017F}" ? "s" : $0 }))
    }
}
