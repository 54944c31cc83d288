import Foundation

extension DockerfilePolicy {
    /// An image a stage starts from (`FROM image`), whose ONBUILD triggers the image builder
    /// runs before the stage's own instructions.
    struct BaseImage: Equatable, Sendable {
        /// The line of the FROM (1-based).
        let line: Int
        /// The image as the Dockerfile names it.
        let image: String
    }

    /// The images the Dockerfile's stages start from, in order: every FROM but `scratch` and
    /// those naming an earlier stage (`FROM build`, in any case, as the builder matches them).
    /// A FROM that names an image must be one line (no continuation), so that the image step
    /// can put the ID of the image it checked in its place (`pinning`); one that is not is
    /// refused.
    static func baseImages(_ text: String) -> Result<[BaseImage], Violation> {
        let physical = physicalLines(text)
        var stages: Set<String> = []
        var bases: [BaseImage] = []
        for instruction in instructions(text) {
            guard let from = fromArguments(instruction.text) else { continue }
            defer { if let stage = from.stage { stages.insert(stage) } }
            guard let image = from.image, image.lowercased() != "scratch", !stages.contains(image.lowercased()) else { continue }
            let line = physical.indices.contains(instruction.line - 1) ? physical[instruction.line - 1] : ""
            guard trimSpaces(line) == instruction.text else {
                return .failure(Violation(line: instruction.line, message: "a FROM that names an image must be written on one line: the sandbox checks that image and builds from exactly the image it checked"))
            }
            bases.append(BaseImage(line: instruction.line, image: image))
        }
        return .success(bases)
    }

    /// The image and the stage name of a FROM instruction (`FROM [--flag…] image [AS name]`,
    /// the stage name lower-cased); nil for any other instruction.
    static func fromArguments(_ instruction: String) -> (image: String?, stage: String?)? {
        let words = instruction.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard words.first?.uppercased() == "FROM" else { return nil }
        let args = Array(words.dropFirst().filter { !$0.hasPrefix("--") })
        let stage = args.count >= 3 && args[1].uppercased() == "AS" ? args[2].lowercased() : nil
        return (args.first, stage)
    }

    /// `text` with the image of the FROM on each line of `ids` replaced by that image ID (64 hex
    /// digits, which the builder takes as the stored image itself, never pulled); every other
    /// byte as it was. A tag moved to another image meanwhile, by a push and another build's
    /// pull, then changes nothing: the build starts from the image whose triggers were checked.
    static func pinning(_ text: String, ids: [Int: String]) -> String {
        var lines = rawLines(text)
        for (line, id) in ids where lines.indices.contains(line - 1) {
            var physical = lines[line - 1]
            let cr = physical.unicodeScalars.last == "\r"
            if cr { physical = String(physical.unicodeScalars.dropLast()) }
            // Words with their ranges: FROM, flags, then the image.
            var index = physical.startIndex
            var words: [Range<String.Index>] = []
            while index < physical.endIndex {
                index = physical[index...].firstIndex { $0 != " " && $0 != "\t" } ?? physical.endIndex
                guard index < physical.endIndex else { break }
                let end = physical[index...].firstIndex { $0 == " " || $0 == "\t" } ?? physical.endIndex
                words.append(index..<end)
                index = end
            }
            guard let image = words.dropFirst().first(where: { !physical[$0].hasPrefix("--") }) else { continue }
            let hex = id.hasPrefix("sha256:") ? String(id.dropFirst(7)) : id
            physical.replaceSubrange(image, with: hex)
            lines[line - 1] = physical + (cr ? "\r" : "")
        }
        return lines.joined(separator: "\n")
    }

    /// The first ONBUILD trigger of a base image that the sandbox cannot hold, with the reason,
    /// or nil. buildah's parser (imagebuilder's `FromImage`) joins an image's triggers with
    /// newlines and reads them as one Dockerfile placed before the stage's instructions, so
    /// they are checked as one, by the Dockerfile's own rules (`check`, `checkImages`): a
    /// trigger ending in an escape continues into the next, a first trigger `# escape=…` is a
    /// parser directive, and so on.
    static func triggerRefusal(_ triggers: [String], registry: String, project: String) -> (trigger: String, reason: String)? {
        guard !triggers.isEmpty else { return nil }
        let text = triggers.joined(separator: "\n")
        guard let violation = check(text) ?? checkImages(text, registry: registry, project: project) else { return nil }
        // The trigger the violation's line falls in (a trigger may hold line breaks itself).
        var culprit: String?
        var firstLine = 1
        for trigger in triggers {
            let lineCount = rawLines(trigger).count
            if violation.line < firstLine + lineCount {
                culprit = trigger
                break
            }
            firstLine += lineCount
        }
        // `--mount` seen only with spaces, quotes and escapes squashed out has no line of its
        // own: name the trigger that holds it, or all of them when it takes several.
        if violation == squashed(text) {
            culprit = triggers.first { squashed($0) != nil } ?? triggers.joined(separator: " ⏎ ")
        }
        return (culprit ?? triggers.joined(separator: " ⏎ "), violation.message)
    }

}
