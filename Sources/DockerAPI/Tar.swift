import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Writes a directory as a tar archive: the build context sent to the Docker Engine API.
///
/// The format is POSIX ustar with PAX extended headers where ustar falls short (paths and
/// link targets over 100 bytes, files of 8 GiB or more), which Docker, podman/buildah and GNU
/// tar all read. Regular files, directories and symbolic links (stored as links, never
/// followed) are written; sockets, FIFOs and devices are skipped. Owners are written as 0:0
/// (as `docker build` does, COPY gives files to root unless told otherwise), modes and
/// modification times are kept, entries are sorted so the same tree gives the same archive.
///
/// Written in Swift rather than by running `tar`: the `.dockerignore` rules must decide what
/// goes in (GNU tar's `--exclude` globbing differs from Docker's), the owners and order must
/// not depend on the host's tar, and a missing or different tar binary cannot break builds.
///
/// All calls block on the disk: run them off Swift's cooperative pool.
public enum Tar {
    /// Archives the contents of `directory` into the file `output` (created or truncated).
    ///
    /// - Parameters:
    ///   - exclude: decides which relative paths stay out ("src/main.c", "target"); `keep`
    ///     names paths that go in regardless (Docker always sends the Dockerfile and `.dockerignore`).
    ///   - replacing: regular files (by relative path) whose entry holds these bytes instead
    ///     of the file's (the Dockerfile the sandbox checked and pinned), mode and time kept.
    /// - Returns: the number of entries written.
    @discardableResult
    public static func archive(
        directory: URL,
        to output: URL,
        ignore: DockerIgnore = DockerIgnore(patterns: []),
        keep: Set<String> = [],
        replacing: [String: [UInt8]] = [:]
    ) throws -> Int {
        guard let file = fopen(output.path, "wb") else {
            throw TarError("cannot create \(output.path): \(String(cString: strerror(errno)))")
        }
        var closed = false
        defer { if !closed { fclose(file) } }
        var writer = TarWriter { bytes in
            let written = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
            if written != bytes.count {
                throw TarError("cannot write \(output.path): \(String(cString: strerror(errno)))")
            }
        }
        let root = directory.standardizedFileURL.path
        var replaced: Set<String> = []
        try walk(root: root, relative: "", writer: &writer, ignore: DockerIgnoreMatcher(ignore), hasExceptions: ignore.hasExceptions, keep: keep,
                 replacing: replacing, replaced: &replaced)
        if let missing = Set(replacing.keys).subtracting(replaced).sorted().first {
            throw TarError("\(missing) is not a regular file in \(directory.path), so its replacement was not written")
        }
        try writer.finish()
        closed = true
        if fclose(file) != 0 {
            throw TarError("cannot write \(output.path): \(String(cString: strerror(errno)))")
        }
        return writer.entries
    }

    private static func walk(
        root: String, relative: String, writer: inout TarWriter, ignore: DockerIgnoreMatcher, hasExceptions: Bool, keep: Set<String>,
        replacing: [String: [UInt8]], replaced: inout Set<String>
    ) throws {
        let dirPath = relative.isEmpty ? root : root + "/" + relative
        for name in try listDirectory(dirPath) {
            let rel = relative.isEmpty ? name : relative + "/" + name
            let full = root + "/" + rel
            var st = stat()
            guard lstat(full, &st) == 0 else {
                throw TarError("cannot read \(full): \(String(cString: strerror(errno)))")
            }
            let kind = st.st_mode & S_IFMT
            let excluded = !keep.contains(rel) && ignore.isExcluded(rel)
            if kind == S_IFDIR {
                if excluded && !hasExceptions { continue }
                if !excluded {
                    try writer.addDirectory(path: rel, mode: st.st_mode & 0o7777, mtime: Int(st.st_mtim.tv_sec))
                }
                // With '!' rules a file under an excluded folder may be let back in: look inside.
                try walk(root: root, relative: rel, writer: &writer, ignore: ignore, hasExceptions: hasExceptions, keep: keep, replacing: replacing, replaced: &replaced)
                continue
            }
            if excluded { continue }
            switch kind {
            case S_IFREG:
                if let bytes = replacing[rel] {
                    replaced.insert(rel)
                    try writer.addFile(path: rel, bytes: bytes, mode: st.st_mode & 0o7777, mtime: Int(st.st_mtim.tv_sec))
                } else {
                    try writer.addFile(path: rel, sourcePath: full, size: Int(st.st_size), mode: st.st_mode & 0o7777, mtime: Int(st.st_mtim.tv_sec))
                }
            case S_IFLNK:
                try writer.addSymlink(path: rel, target: try readLink(full), mtime: Int(st.st_mtim.tv_sec))
            default:
                continue
            }
        }
    }

    private static func listDirectory(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else {
            throw TarError("cannot list \(path): \(String(cString: strerror(errno)))")
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name == "." || name == ".." { continue }
            names.append(name)
        }
        return names.sorted()
    }

    private static func readLink(_ path: String) throws -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = buffer.withUnsafeMutableBufferPointer { readlink(path, $0.baseAddress!, $0.count - 1) }
        guard count >= 0 else { throw TarError("cannot read link \(path): \(String(cString: strerror(errno)))") }
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// A failure to write an archive.
public struct TarError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = "tar: " + description }
}

/// Streams tar entries to a sink in 512-byte blocks.
struct TarWriter {
    private let sink: ([UInt8]) throws -> Void
    private(set) var entries = 0

    init(sink: @escaping ([UInt8]) throws -> Void) {
        self.sink = sink
    }

    mutating func addDirectory(path: String, mode: mode_t, mtime: Int) throws {
        try writeHeader(path: path + "/", type: "5", size: 0, mode: mode, mtime: mtime)
    }

    mutating func addSymlink(path: String, target: String, mtime: Int) throws {
        try writeHeader(path: path, type: "2", size: 0, mode: 0o777, mtime: mtime, linkTarget: target)
    }

    /// Writes a file's header and exactly `size` bytes of it (zeros if it shrank meanwhile).
    mutating func addFile(path: String, sourcePath: String, size: Int, mode: mode_t, mtime: Int) throws {
        guard let file = fopen(sourcePath, "rb") else {
            throw TarError("cannot read \(sourcePath): \(String(cString: strerror(errno)))")
        }
        defer { fclose(file) }
        try writeHeader(path: path, type: "0", size: size, mode: mode, mtime: mtime)
        var remaining = size
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while remaining > 0 {
            let want = min(remaining, chunk.count)
            let got = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, want, file) }
            if got == 0 {
                if ferror(file) != 0 { throw TarError("cannot read \(sourcePath): \(String(cString: strerror(errno)))") }
                try sink([UInt8](repeating: 0, count: want))  // the file shrank while being read
                remaining -= want
                continue
            }
            try sink(Array(chunk[..<got]))
            remaining -= got
        }
        let padding = (512 - size % 512) % 512
        if padding > 0 { try sink([UInt8](repeating: 0, count: padding)) }
    }

    /// Writes a file entry holding `bytes`.
    mutating func addFile(path: String, bytes: [UInt8], mode: mode_t, mtime: Int) throws {
        try writeHeader(path: path, type: "0", size: bytes.count, mode: mode, mtime: mtime)
        try sink(bytes)
        let padding = (512 - bytes.count % 512) % 512
        if padding > 0 { try sink([UInt8](repeating: 0, count: padding)) }
    }

    /// The end of the archive: two zero blocks.
    func finish() throws {
        try sink([UInt8](repeating: 0, count: 1024))
    }

    private mutating func writeHeader(path: String, type: Character, size: Int, mode: mode_t, mtime: Int, linkTarget: String = "") throws {
        var pax: [(String, String)] = []
        if path.utf8.count > 100 { pax.append(("path", path)) }
        if linkTarget.utf8.count > 100 { pax.append(("linkpath", linkTarget)) }
        let maxOctalSize = 0o77777777777  // 11 octal digits
        if size > maxOctalSize { pax.append(("size", String(size))) }
        if !pax.isEmpty {
            var records: [UInt8] = []
            for (key, value) in pax { records += TarWriter.paxRecord(key, value) }
            let paxName = "PaxHeaders/" + String(decoding: Array(path.utf8.suffix(80)), as: UTF8.self)
            try sink(TarWriter.header(name: paxName, type: "x", size: records.count, mode: 0o644, mtime: mtime, linkTarget: ""))
            try sink(records)
            let padding = (512 - records.count % 512) % 512
            if padding > 0 { try sink([UInt8](repeating: 0, count: padding)) }
        }
        try sink(TarWriter.header(name: path, type: type, size: min(size, maxOctalSize), mode: mode, mtime: mtime, linkTarget: linkTarget))
        entries += 1
    }

    /// A PAX record: "<length> <key>=<value>\n", where the length counts itself.
    static func paxRecord(_ key: String, _ value: String) -> [UInt8] {
        let body = " \(key)=\(value)\n"
        var length = body.utf8.count + 1
        while String(length).utf8.count + body.utf8.count != length {
            length = String(length).utf8.count + body.utf8.count
        }
        return Array((String(length) + body).utf8)
    }

    static func header(name: String, type: Character, size: Int, mode: mode_t, mtime: Int, linkTarget: String) -> [UInt8] {
        var block = [UInt8](repeating: 0, count: 512)
        func put(_ bytes: some Sequence<UInt8>, at offset: Int, max: Int) {
            for (i, byte) in bytes.prefix(max).enumerated() { block[offset + i] = byte }
        }
        func octal(_ value: Int, at offset: Int, width: Int) {
            // width - 1 digits, then NUL
            let digits = String(value, radix: 8)
            let padded = String(repeating: "0", count: max(0, width - 1 - digits.count)) + digits
            put(padded.utf8, at: offset, max: width - 1)
        }
        // Truncated fields are safe: the PAX header before this one carries the full value.
        put(truncatedUTF8(name, 100), at: 0, max: 100)
        octal(Int(mode), at: 100, width: 8)
        octal(0, at: 108, width: 8)
        octal(0, at: 116, width: 8)
        octal(size, at: 124, width: 12)
        octal(max(0, mtime), at: 136, width: 12)
        put(Array(repeating: UInt8(ascii: " "), count: 8), at: 148, max: 8)
        block[156] = type.asciiValue!
        put(truncatedUTF8(linkTarget, 100), at: 157, max: 100)
        put("ustar\0".utf8, at: 257, max: 6)
        put("00".utf8, at: 263, max: 2)
        put("root".utf8, at: 265, max: 32)
        put("root".utf8, at: 297, max: 32)
        let checksum = block.reduce(0) { $0 + Int($1) }
        let digits = String(checksum, radix: 8)
        put((String(repeating: "0", count: max(0, 6 - digits.count)) + digits).utf8, at: 148, max: 6)
        block[154] = 0
        block[155] = UInt8(ascii: " ")
        return block
    }

    private static func truncatedUTF8(_ s: String, _ max: Int) -> [UInt8] {
        Array(s.utf8.prefix(max))
    }
}

/// The rules of a `.dockerignore` file, with Docker's meaning.
///
/// One pattern a line; `#` starts a comment line; a leading `!` lets matching paths back in;
/// the last matching line wins. Patterns are relative to the context (a leading `/` is
/// dropped) and use `*` (within one path segment), `?`, `[…]` classes, `\` escapes and `**`
/// (any number of segments). A pattern that matches a folder excludes everything in it.
public struct DockerIgnore: Sendable {
    struct Rule: Sendable {
        let pattern: String
        let regex: String
        let negated: Bool
    }

    let rules: [Rule]

    /// Whether some rule starts with `!` (then excluded folders must still be looked into).
    public var hasExceptions: Bool { rules.contains { $0.negated } }

    public init(patterns: [String]) {
        var rules: [Rule] = []
        for raw in patterns {
            var line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            var negated = false
            if line.hasPrefix("!") {
                negated = true
                line = String(line.dropFirst()).trimmingCharacters(in: .whitespaces)
            }
            let cleaned = DockerIgnore.clean(line)
            if cleaned.isEmpty || cleaned == "." { continue }
            rules.append(Rule(pattern: cleaned, regex: DockerIgnore.regex(for: cleaned), negated: negated))
        }
        self.rules = rules
    }

    /// Parses the text of a `.dockerignore` file.
    public init(contents: String) {
        self.init(patterns: contents.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).map(String.init))
    }

    /// The largest `.dockerignore` read (64 KiB).
    public static let maximumBytes = 64 << 10

    /// The rules of `<directory>/.dockerignore`, or none if there is no such file. Only a
    /// regular file is read: a link could point anywhere (`/dev/zero` never ends).
    public init(contextDirectory: URL) throws {
        let file = contextDirectory.appendingPathComponent(".dockerignore")
        var st = stat()
        guard lstat(file.path, &st) == 0 else {
            self.init(patterns: [])
            return
        }
        guard st.st_mode & S_IFMT == S_IFREG else {
            throw TarError("the context's .dockerignore is not a regular file (a link or a device): make it a plain file")
        }
        // A build writes this file: a huge one would take the agent's memory, many patterns its time.
        guard st.st_size <= DockerIgnore.maximumBytes else {
            throw TarError("the context's .dockerignore is larger than \(DockerIgnore.maximumBytes / 1024) KiB: keep it to the patterns the image needs")
        }
        self.init(contents: try String(contentsOf: file, encoding: .utf8))
    }

    /// Whether `path` (relative to the context, "/"-separated) stays out of the archive.
    /// (Compiles the rules on each call: for many paths, `Tar.archive` compiles them once.)
    public func isExcluded(_ path: String) -> Bool {
        DockerIgnoreMatcher(self).isExcluded(path)
    }

    /// Like Go's filepath.Clean, then without a leading "/".
    static func clean(_ pattern: String) -> String {
        var parts: [Substring] = []
        for part in pattern.split(separator: "/", omittingEmptySubsequences: true) {
            if part == "." { continue }
            if part == ".." {
                if !parts.isEmpty && parts.last != ".." { parts.removeLast() } else if !pattern.hasPrefix("/") { parts.append(part) }
                continue
            }
            parts.append(part)
        }
        return parts.joined(separator: "/")
    }

    /// The pattern as an anchored regular expression (the translation Docker's pattern matcher makes).
    static func regex(for pattern: String) -> String {
        var out = "^"
        let chars = Array(pattern)
        var i = 0
        var inClass = false
        while i < chars.count {
            let c = chars[i]
            if inClass {
                if c == "]" { inClass = false; out.append("]") }
                else if c == "\\" && i + 1 < chars.count { i += 1; out.append("\\" + String(chars[i])) }
                else { out.append(c) }
                i += 1
                continue
            }
            switch c {
            case "*":
                if i + 1 < chars.count && chars[i + 1] == "*" {
                    i += 1
                    if i + 1 < chars.count && chars[i + 1] == "/" { i += 1 }
                    out += (i + 1 >= chars.count) ? ".*" : "(.*/)?"
                } else {
                    out += "[^/]*"
                }
            case "?":
                out += "[^/]"
            case "[":
                inClass = true
                out.append("[")
                if i + 1 < chars.count && (chars[i + 1] == "!" || chars[i + 1] == "^") { out.append("^"); i += 1 }
            case "\\":
                if i + 1 < chars.count { i += 1; out += NSRegularExpression.escapedPattern(for: String(chars[i])) }
                else { out += "\\\\" }
            default:
                out += NSRegularExpression.escapedPattern(for: String(c))
            }
            i += 1
        }
        if inClass { out.append("]") }
        return out + "$"
    }
}

/// Compiled rules, made once per archive (NSRegularExpression is not Sendable, so the
/// `Sendable` `DockerIgnore` keeps only the expressions' text).
struct DockerIgnoreMatcher {
    private let rules: [(regex: NSRegularExpression?, negated: Bool)]

    init(_ ignore: DockerIgnore) {
        rules = ignore.rules.map { (try? NSRegularExpression(pattern: $0.regex), $0.negated) }
    }

    func isExcluded(_ path: String) -> Bool {
        // A path matches when the pattern matches it or one of the folders above it.
        var candidates: [String] = []
        var prefix = ""
        for part in path.split(separator: "/") {
            prefix = prefix.isEmpty ? String(part) : prefix + "/" + part
            candidates.append(prefix)
        }
        var excluded = false
        for rule in rules {
            guard let regex = rule.regex else { continue }
            let matched = candidates.contains { candidate in
                regex.firstMatch(in: candidate, range: NSRange(candidate.startIndex..., in: candidate)) != nil
            }
            if matched { excluded = !rule.negated }
        }
        return excluded
    }
}
