import Foundation

/// The Dockerfile instructions a build may not use, because the image builder carries them out
/// outside the build's sandbox. Checked before the image step sends anything.
///
/// Rules (each found on podman 4.3.1 / buildah 1.28 here):
/// 1. `RUN --mount=…` is refused: `type=cache,id=../../..` mounts the HOST's root folder into
///    the step, read-write (buildah joins the id to its cache folder without confining it;
///    CVE-2024-9675), and cache mounts are shared by every project's builds.
/// 2. `ADD` from a URL is refused: buildah downloads it itself, on the host's network, so
///    `ADD http://127.0.0.1:2379/…` reads the control plane. Sources with a variable (`$U`)
///    are refused too, as they may expand to a URL. Fetch files in the compile step instead.
/// 3. `ONBUILD` instructions are checked as the instruction they wrap; a base image's own
///    ONBUILD triggers, which buildah runs before a stage's instructions, by these same rules
///    before the image step (`triggerRefusal`, `BuildRunner.checkBaseImages`).
/// Other flags of `RUN` (`--network`, `--security`) are refused the same way as `--mount`:
/// this buildah knows none of them, a later one may.
///
/// The text is read as buildah's parser (openshift/imagebuilder) reads it: only `escape` is a
/// parser directive, the first line that is not one ends them, the escape is the first
/// character after `=`, lines end at `\n` only, only spaces and tabs are trimmed; line
/// continuations with the escape character, comment and blank lines inside a continued
/// instruction, keywords in any case.
///
/// Two more rules close the gaps where two parsers could read one text two ways (a hostile
/// reviewer found five: a BOM before the directive, `\v` or a lone `\r` as a line break, a
/// no-break space after a continuation, a second directive line, a longer escape value):
/// the text must be UTF-8 with no control characters but tab and line ends, no non-ASCII
/// space and no BOM; and, whatever the escape character, `--mount` may not appear anywhere
/// once comment lines, spaces, quotes and both escape characters are taken out.
enum DockerfilePolicy {
    struct Violation: Error, Equatable, CustomStringConvertible {
        let line: Int
        let message: String
        var description: String { "Dockerfile line \(line): \(message)" }
    }

    /// The first instruction the sandbox cannot hold, or nil.
    static func check(_ text: String) -> Violation? {
        if let violation = characters(text) { return violation }
        for instruction in instructions(text) {
            if let message = refusal(instruction.text) { return Violation(line: instruction.line, message: message) }
        }
        return squashed(text)
    }

    /// Characters two parsers may read differently: refused wherever they are.
    static func characters(_ text: String) -> Violation? {
        var line = 1
        let scalars = Array(text.unicodeScalars)
        for (i, u) in scalars.enumerated() {
            if u == "\n" { line += 1; continue }
            if u == "\t" { continue }
            if u == "\r", i + 1 < scalars.count, scalars[i + 1] == "\n" { continue }
            let bad: String? = switch u.value {
            case 0xFFFD: "bytes that are not UTF-8"
            case 0xFEFF: "a byte order mark"
            case 0..<0x20, 0x7F, 0x80..<0xA0: "the control character U+\(String(u.value, radix: 16, uppercase: true))"
            default: u.value >= 0x80 && u.properties.isWhitespace ? "the non-ASCII space U+\(String(u.value, radix: 16, uppercase: true))" : nil
            }
            if let bad {
                return Violation(line: line, message: "\(bad) is not allowed in a Dockerfile: parsers disagree on it, so the check could not see what the image builder runs. Save the Dockerfile as plain UTF-8 text")
            }
        }
        return nil
    }

    /// `--mount` anywhere, read with every escape character and quoting taken out.
    static func squashed(_ text: String) -> Violation? {
        let kept = physicalLines(text)
            .filter { !$0.drop { $0 == " " || $0 == "\t" }.hasPrefix("#") }
            .joined()
        let squashed = String(kept.unicodeScalars.filter { !" \t\r\\`\"'".unicodeScalars.contains($0) }).lowercased()
        guard squashed.contains("--mount") || squashed.contains("-mount=") else { return nil }
        return Violation(line: 1, message: "--mount appears in the Dockerfile (spaces, quotes and escapes aside): RUN --mount is not allowed, the image builder would carry it out outside the build's sandbox. Run the command without it, or do the work in the compile step")
    }

    private static func refusal(_ text: String) -> String? {
        let (keyword, rest) = split(text)
        switch keyword {
        case "ONBUILD":
            return refusal(rest).map { "ONBUILD: " + $0 }
        case "RUN":
            if rest.hasPrefix("--") {
                let flag = rest.prefix { !$0.isWhitespace && $0 != "=" }
                return "RUN \(flag) is not allowed: the image builder would carry it out outside the build's sandbox (a cache or bind mount can reach the builder's host). Run the command without it, or do the work in the compile step"
            }
        case "ADD":
            guard let sources = addSources(rest) else {
                return "ADD \(rest.prefix(80)) is not allowed: a list that starts with '[' must be exactly a JSON list of strings"
            }
            for source in sources where !isPlainPath(source) || source.contains("://") || source.hasPrefix("git@") {
                return "ADD \(source) is not allowed: the image builder would fetch it on the host's own network. Download files in the compile step (build command) and COPY them, or use COPY for files of the repository"
            }
        default:
            break
        }
        return nil
    }

    /// The upper-cased keyword and the rest of an instruction.
    private static func split(_ text: String) -> (String, String) {
        let trimmed = text.drop { $0.isWhitespace }
        let keyword = trimmed.prefix { !$0.isWhitespace }
        let rest = trimmed.dropFirst(keyword.count).drop { $0.isWhitespace }
        return (keyword.uppercased(), String(rest))
    }

    /// An ADD source the builder can only read as a file of the context: letters, digits and
    /// `._/*?[]@+,=~-`. No quotes, escapes or `$`, which the builder's word processing would
    /// turn into something else (`http:"//"host` is a URL to it); no `:`, so no URL.
    static func isPlainPath(_ source: String) -> Bool {
        !source.isEmpty && source.unicodeScalars.allSatisfy {
            ($0.isASCII && (CharacterSet.alphanumerics.contains($0))) || "._/*?[]@+,=~-".unicodeScalars.contains($0)
        }
    }

    /// The source arguments of an ADD (flags and the destination left out), in either form;
    /// nil for text that starts like a JSON list and is not exactly one.
    private static func addSources(_ rest: String) -> [String]? {
        var words = rest.trimmingCharacters(in: .whitespaces).split(whereSeparator: \.isWhitespace).map(String.init)
        // Flags come first in the shell form; a JSON list may follow them.
        while let first = words.first, first.hasPrefix("--") { words.removeFirst() }
        let remainder = words.joined(separator: " ")
        if remainder.hasPrefix("[") {
            guard let data = remainder.data(using: .utf8), let list = try? JSONDecoder().decode([String].self, from: data) else { return nil }
            words = list
        }
        return Array(words.dropLast())
    }

    /// Logical instructions with the line each starts on.
    static func instructions(_ text: String) -> [(line: Int, text: String)] {
        let lines = physicalLines(text)
        var escape: Character = "\\"
        var index = 0
        // Parser directives as imagebuilder reads them: `#[ \t]*escape[ \t]*=[ \t]*(.)` lines
        // at the very top; the first other line ends them.
        while index < lines.count {
            let line = lines[index].drop { $0 == " " || $0 == "\t" }
            guard line.hasPrefix("#") else { break }
            let afterHash = line.dropFirst().drop { $0 == " " || $0 == "\t" }
            guard afterHash.lowercased().hasPrefix("escape") else { break }
            let afterKey = afterHash.dropFirst("escape".count).drop { $0 == " " || $0 == "\t" }
            guard afterKey.hasPrefix("=") else { break }
            guard let c = afterKey.dropFirst().drop(while: { $0 == " " || $0 == "\t" }).first else { break }
            escape = c
            index += 1
        }
        var result: [(line: Int, text: String)] = []
        var current = ""
        var startLine = 0
        var continuing = false
        for i in index..<lines.count {
            let raw = lines[i]
            let trimmed = trimSpaces(raw)
            if trimmed.hasPrefix("#") { continue }          // comments, also inside a continuation
            if trimmed.isEmpty { continue }                 // blank lines, also inside a continuation
            if !continuing {
                startLine = i + 1
                current = ""
            }
            let body = trimmed
            if body.last == escape {
                current += String(body.dropLast()) + " "
                continuing = true
            } else {
                current += body
                continuing = false
                result.append((startLine, current))
            }
        }
        if continuing { result.append((startLine, current)) }
        return result
    }

    /// The lines of the text as written, without their line ends ("\n", "\r\n"). Split by
    /// scalars: to Swift "\r\n" is one Character, not "\n", so a split by Characters leaves a
    /// CRLF file one line (which hid every instruction after a first comment line).
    static func physicalLines(_ text: String) -> [String] {
        rawLines(text).map { $0.unicodeScalars.last == "\r" ? String($0.unicodeScalars.dropLast()) : $0 }
    }

    /// The lines of the text split at each "\n" scalar, a "\r" before it kept.
    static func rawLines(_ text: String) -> [String] {
        text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false).map { String(String.UnicodeScalarView($0)) }
    }

    /// Spaces and tabs off both ends, as imagebuilder trims (not other whitespace).
    static func trimSpaces(_ s: String) -> String {
        String(s.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}
