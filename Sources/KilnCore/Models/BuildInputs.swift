import Foundation

/// What a build's image is made of, as the agent read it after the fetch and before the
/// compile, and the key that names the set (docs/reuse.md). A later build of the same project
/// whose inputs give the same key reuses the image of the build that recorded it
/// (``ReuseEntry``), without compiling.
///
/// Every input is read by the agent from its own mirror, container engine and the task the
/// scheduler wrote, never from a file of the repository the build could shape: the tree id
/// is git's hash of the checkout's content, the images are the engine's ids of their
/// configurations. A build's own code runs only later (compile, the Dockerfile's RUN steps)
/// and cannot change what was read.
public struct BuildInputs: Codable, Sendable, Equatable {
    /// `sha256:<64 hex>` of ``canonicalText`` (computed by the agent, which has SHA-256).
    public var key: String
    /// The git tree id of the checked-out commit: every file the compile and the image see.
    public var tree: String
    /// The engine's image id (`sha256:…`) of the build image the compile would run.
    public var buildImage: String
    /// The engine's ids of the Dockerfile's `FROM` images, in their order (stage names and
    /// `scratch` are not images and are left out).
    public var baseImages: [String]
    /// Whether the build counted as one of a protected ref: the protected caches and the
    /// protected-only secrets (`MavenCachePlacement`). Not part of the key: it decides who may
    /// reuse whom (``ReuseEntry/serves(protected:)``).
    public var protected: Bool

    public init(key: String, tree: String, buildImage: String, baseImages: [String], protected: Bool) {
        self.key = key
        self.tree = tree
        self.buildImage = buildImage
        self.baseImages = baseImages
        self.protected = protected
    }

    /// The text whose SHA-256 is the key: one `name=value` line per input, in a fixed order,
    /// each value escaped so that no value can end its line early (a build command holds any
    /// character). Everything that changes the image or its meaning is in it:
    /// - the project (name and registry repository): one project never reuses another's image,
    ///   even with the same inputs;
    /// - the tree of the commit (content of the checkout, the Dockerfile and context included);
    /// - the build image's id, the build command, the Dockerfile and context paths;
    /// - the base images' ids;
    /// - the caches switch (`mvncache`) and the declared cache folders;
    /// - the names of the build secrets the build gets (as env or files) and the registries it
    ///   has logins for. Values are left out on purpose: a hash of a secret in a record anyone
    ///   with read access sees could be tested against guesses. A changed value alone does not
    ///   defeat the reuse (`--rebuild` does);
    /// - the project's `pushTo` list (a reused build retags the farm's registry only, so
    ///   builds with pushTo are never reused at all: see `ReuseDecision`);
    /// - the version of this text (`v1`), so that a change of the rules starts new keys.
    public static func canonicalText(project: Project, tree: String, buildImage: String, baseImages: [String], mvncache: Bool,
                                     secretNames: [String], registryLogins: [String]) -> String {
        var lines: [(String, String)] = [
            ("kiln-reuse", "v1"),
            ("project", project.name),
            ("repository", project.repositoryName),
            ("tree", tree),
            ("buildImage", buildImage),
            ("buildCommand", project.buildCommand),
            ("dockerfile", project.dockerfile),
            ("context", project.context),
        ]
        for (i, id) in baseImages.enumerated() { lines.append(("baseImage.\(i)", id)) }
        lines.append(("mvncache", mvncache ? "on" : "off"))
        if mvncache { for path in project.effectiveCaches { lines.append(("cache", path)) } }
        for name in secretNames.sorted() { lines.append(("secret", name)) }
        for host in registryLogins.sorted() { lines.append(("registryLogin", host)) }
        for target in project.pushTo ?? [] { lines.append(("pushTo", target)) }
        return lines.map { "\($0.0)=\(escape($0.1))\n" }.joined()
    }

    /// `\` and line ends escaped: every value stays on its own line.
    static func escape(_ value: String) -> String {
        var out = ""
        for c in value.unicodeScalars {
            switch c {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }

    /// Whether `key` is a key as the agent writes it (`sha256:` and 64 lower-case hex digits):
    /// it becomes part of an etcd key.
    public static func isValidKey(_ key: String) -> Bool {
        key.hasPrefix("sha256:") && key.utf8.count == 71 && key.utf8.dropFirst(7).allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }
    }
}

/// The entry of the reuse index (`Keys.reuseEntry`): the latest successful, real (not itself
/// reused) build of a project with one input key and one protection class. Written by the agent
/// just before it records the build's success (never for a failure); a reusing agent takes it
/// only once that build's record says `succeeded`, so a failed, cancelled or unfinished build is
/// never reused.
public struct ReuseEntry: Codable, Sendable, Equatable {
    public var build: String
    /// The manifest digest the build pushed.
    public var digest: String
    /// The build's image reference (`registry/repository:tag`).
    public var image: String
    /// The build counted as one of a protected ref (``BuildInputs/protected``).
    public var protected: Bool

    public init(build: String, digest: String, image: String, protected: Bool) {
        self.build = build
        self.digest = digest
        self.image = image
        self.protected = protected
    }

    /// Whether a build that is (`protected`) or is not of a protected ref may take this image.
    /// A protected build takes only an image a protected build made: an unprotected one ran with
    /// the caches every feature branch writes into, and what a planted plugin put into its image
    /// would otherwise be tagged as a release. An unprotected build may take either (the image of
    /// a protected build is already in the same repository, readable by the same people; the
    /// common case is a tag push of a commit the default branch built).
    public func serves(protected requester: Bool) -> Bool {
        protected || !requester
    }
}

/// The agent's decision for one build: build for real (and why), or reuse an entry. Pure.
///
/// Rules, in order:
/// 1. `rebuild` on the build (`kiln build --rebuild`): build.
/// 2. The project's `reuseBuilds` is false: build.
/// 3. The agent was started with `--no-reuse-builds`: build.
/// 4. The project pushes elsewhere too (`pushTo`): build (a reuse retags the farm's registry
///    only).
/// 5. No inputs could be read (no key): build.
/// 6. Among the index's entries for the key, the ones that serve this build's protection class
///    (``ReuseEntry/serves(protected:)``), a protected one first: reuse it. None: build.
public enum ReuseDecision: Equatable, Sendable {
    case build(reason: String)
    case reuse(ReuseEntry)

    /// Rules 1 to 4: why this build may not reuse whatever the index holds (nil: it may).
    public static func refusal(rebuild: Bool, project: Project, agentAllows: Bool) -> String? {
        if rebuild { return "a rebuild was asked for" }
        if project.reuseBuilds == false { return "the project's reuseBuilds is off" }
        if !agentAllows { return "this agent does not reuse builds (--no-reuse-builds)" }
        if project.pushTo?.isEmpty == false { return "the project pushes to other registries too (pushTo), which a reuse does not retag" }
        return nil
    }

    public static func decide(rebuild: Bool, project: Project, agentAllows: Bool, inputs: BuildInputs?, entries: [ReuseEntry]) -> ReuseDecision {
        if let reason = refusal(rebuild: rebuild, project: project, agentAllows: agentAllows) { return .build(reason: reason) }
        guard let inputs else { return .build(reason: "the build's inputs could not all be read") }
        let usable = entries.filter { $0.serves(protected: inputs.protected) }
        guard let pick = usable.first(where: \.protected) ?? usable.first else {
            if !entries.isEmpty { return .build(reason: "the earlier build with these inputs was of an unprotected ref (its caches are not the protected ones)") }
            return .build(reason: "no earlier successful build has these inputs")
        }
        return .reuse(pick)
    }
}

extension Build {
    /// The reuse index's key and entry this build's end writes: a real build that succeeded with
    /// its inputs read, an image and a digest. Nil for any other.
    public func reuseEntry(keys: Keys) -> (key: String, entry: ReuseEntry)? {
        guard status == .succeeded, reusedFrom == nil, let inputs, BuildInputs.isValidKey(inputs.key),
              let image, let digest, imageByDigest != nil else { return nil }
        return (keys.reuseEntry(project: project, key: inputs.key, protected: inputs.protected),
                ReuseEntry(build: id, digest: digest, image: image, protected: inputs.protected))
    }
}
