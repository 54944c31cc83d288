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
/// 3. `ONBUILD` instructions are checked as the instruction they wrap.
/// Other flags of `RUN` (`--network`, `--security`) are refused the same way as `--mount`:
/// this buildah knows none of them, a later one may.
///
/// The text is read as Docker reads it: parser directives (`# escape=`), line continuations
/// with the escape character, comment and blank lines inside a continued instruction, keywords
/// in any case.
enum DockerfilePolicy {
    struct Violation: Error, Equatable, CustomStringConvertible {
        let line: Int
        let message: String
        var description: String { "Dockerfile line \(line): \(message)" }
    }

    /// The first instruction the sandbox cannot hold, or nil.
    static func check(_ text: String) -> Violation? {
        for instruction in instructions(text) {
            if let message = refusal(instruction.text) { return Violation(line: instruction.line, message: message) }
        }
        return nil
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
            for source in addSources(rest) where source.contains("://") || source.contains("$") || source.hasPrefix("git@") {
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

    /// The source arguments of an ADD (flags and the destination left out), in either form.
    private static func addSources(_ rest: String) -> [String] {
        var words: [String]
        let trimmed = rest.trimmingCharacters(in: .whitespaces)
        if trimmed.hasPrefix("["), let data = trimmed.data(using: .utf8), let list = try? JSONDecoder().decode([String].self, from: data) {
            words = list
        } else {
            words = trimmed.split(whereSeparator: \.isWhitespace).map(String.init)
            // Flags come first in the shell form; a JSON list may follow them.
            while let first = words.first, first.hasPrefix("--") { words.removeFirst() }
            let remainder = words.joined(separator: " ")
            if remainder.hasPrefix("["), let data = remainder.data(using: .utf8), let list = try? JSONDecoder().decode([String].self, from: data) {
                words = list
            }
        }
        return Array(words.dropLast())
    }

    /// Logical instructions with the line each starts on.
    static func instructions(_ text: String) -> [(line: Int, text: String)] {
        let lines = text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).map(String.init)
        var escape: Character = "\\"
        var index = 0
        // Parser directives: `# key=value` lines at the very top.
        while index < lines.count {
            let line = lines[index].trimmingCharacters(in: .whitespaces)
            guard line.hasPrefix("#"), let eq = line.firstIndex(of: "=") else { break }
            let key = line.dropFirst().prefix { $0 != "=" }.trimmingCharacters(in: .whitespaces).lowercased()
            let value = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            if key == "escape", let c = value.first, value.count == 1, c == "`" || c == "\\" { escape = c }
            else if key != "syntax" && key != "check" { break }
            index += 1
        }
        var result: [(line: Int, text: String)] = []
        var current = ""
        var startLine = 0
        var continuing = false
        for i in index..<lines.count {
            let raw = lines[i]
            let trimmed = raw.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("#") { continue }          // comments, also inside a continuation
            if trimmed.isEmpty { continue }                 // blank lines, also inside a continuation
            if !continuing {
                startLine = i + 1
                current = ""
            }
            let body = raw.trimmingCharacters(in: .whitespaces)
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
}
