import Foundation

extension DockerfilePolicy {
    /// The images a Dockerfile starts from or copies out of (`FROM`, `COPY --from`), checked
    /// against the engine's storage, which every project's builds share and which also holds
    /// images deployed on this machine (`kiln up`'s cells): the engine serves a name it has
    /// without asking the registry, so the registry's tokens cannot keep one project's image
    /// from another's build there. Refused:
    /// - an image of the farm's registry (`registry`, or any loopback name with a port) other
    ///   than the build's own project's: `FROM 127.0.0.1:5000/other@sha256:…`;
    /// - an image ID (`FROM 9b7adf92fabe`, `sha256:…`), which names whatever is stored (build
    ///   logs show image IDs), in any length: the engine takes a prefix as short as two digits
    ///   (`31` was the image `316336b9…` here), so any name of hex digits alone is refused;
    /// - a name under `localhost/kiln-kept/` or `localhost/kiln-pulled/`, also written short
    ///   (`kiln-kept/…`: the engine looks a short name up under `localhost/` first), which the
    ///   agent gives the images it keeps for layer reuse (`KeptImages`) and the ones it pulled
    ///   with a project's login (`pullWithLogin`), both other builds' own;
    /// - a name made from a variable (`FROM $BASE`), which the check cannot read.
    /// Stage names (`FROM … AS build`, `COPY --from=build`) and `localhost/…` (images made on
    /// this machine, the base images) pass.
    static func checkImages(_ text: String, registry: String, project: String) -> Violation? {
        var stages: Set<String> = []
        for instruction in instructions(text) {
            let words = instruction.text.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard let keyword = words.first?.uppercased() else { continue }
            var references: [String] = []
            var stage: String?
            if let from = fromArguments(instruction.text) {
                if let image = from.image { references.append(image) }
                // Named after the check: `FROM x AS x` starts from the image x, not a stage.
                stage = from.stage
            } else if keyword == "COPY" || keyword == "ONBUILD" {
                for word in words.dropFirst() where word.lowercased().hasPrefix("--from=") {
                    references.append(String(word.dropFirst("--from=".count)))
                }
            }
            for reference in references where !stages.contains(reference.lowercased()) {
                if let reason = refusal(image: reference, registry: registry, project: project) {
                    return Violation(line: instruction.line, message: reason)
                }
            }
            if let stage { stages.insert(stage) }
        }
        return nil
    }

    /// Where the agent names the images of other builds it holds (`KeptImages`, `pullWithLogin`).
    static let agentPrivatePrefixes = ["localhost/kiln-kept/", "localhost/kiln-pulled/"]

    static func refusal(image reference: String, registry: String, project: String) -> String? {
        let ref = reference.lowercased()
        if ref.contains("$") {
            return "the image '\(reference)' is made from a variable: name the image itself, so that the sandbox can check it"
        }
        let hex = ref.hasPrefix("sha256:") ? String(ref.dropFirst(7)) : ref
        if !hex.isEmpty, hex.count <= 64, hex.allSatisfy(\.isHexDigit) {
            return "'\(reference)' is or could be read as an image ID, which names whatever the builder has stored (other projects' images among them): name the image by its repository (docker.io/library/\(reference) for an image of Docker Hub)"
        }
        let local = ref.hasPrefix("localhost/") ? ref : "localhost/" + ref
        if Self.agentPrivatePrefixes.contains(where: local.hasPrefix) {
            return "'\(reference)' is a name the agent gives other builds' images; a build may not start from them"
        }
        guard let slash = ref.firstIndex(of: "/") else { return nil }
        let host = String(ref[..<slash])
        let path = ref[ref.index(after: slash)...].prefix { $0 != ":" && $0 != "@" }
        let hostName = host.hasPrefix("[") ? String(host.prefix { $0 != "]" }) + "]" : String(host.split(separator: ":").first ?? "")
        let loopbackWithPort = host.contains(":") && (hostName == "localhost" || hostName.hasPrefix("127.") || hostName == "[::1]" || hostName == "0.0.0.0")
        guard host == registry.lowercased() || loopbackWithPort else { return nil }
        guard path == project else {
            return "'\(reference)' is an image of another project in the farm's registry; a build may start from its own project's images (\(registry)/\(project)) and from base images, not from another project's"
        }
        return nil
    }
}
