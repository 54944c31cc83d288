import Foundation

/// A project Kiln builds: where its code is and how to turn it into an image.
///
/// Stored at `/kiln/projects/{name}`. `name` is also the image repository's last path
/// component, so it follows the project-name rule (`[a-z0-9-]`).
public struct Project: Codable, Sendable, Equatable {
    public var name: String
    /// Git URL: http(s)://, ssh://, git://, file:// or scp-like `user@host:path`.
    public var repository: String
    /// Image that runs the build command (for example a JDK + Maven image).
    public var buildImage: String
    /// Shell command run in the checkout (`sh -c`), for example `mvn -B -q package`.
    public var buildCommand: String
    /// Dockerfile path, relative to the checkout.
    public var dockerfile: String
    /// Build context directory, relative to the checkout.
    public var context: String
    /// Default branch, used when a build names no ref.
    public var defaultBranch: String
    /// Labels an agent must carry (all of them) to build this project.
    public var labels: [String]
    /// A newer build of a branch cancels older ones of the same branch; nil cancels none.
    public var supersede: Supersede?
    /// At most this many of the project's builds run at once (nil: no limit of its own;
    /// the agents' capacity still applies). The others wait in the queue and say why.
    public var maxConcurrent: Int?
    /// Branches whose pushes build (GitLab webhooks), as patterns where `*` matches any run of
    /// characters, `/` included: `main`, `release/*`. Nil: the default branch only.
    public var branches: [String]?
    /// The secret token GitLab sends in `X-Gitlab-Token` with this project's webhooks. Kept in
    /// etcd, never shown by the API; a project without one cannot be triggered by a webhook.
    public var webhookSecret: String?
    /// What runs after a build succeeds (deploy, lb, retire, notify), checked against the
    /// plugins' settings when the project is saved.
    public var pipeline: [PipelineStep]?
    /// Refs whose builds use the project's protected Maven cache, besides the default branch:
    /// patterns as in `branches` (`release/*`, `refs/tags/v*`). Only people trusted with the
    /// project's releases should be able to push these refs: what a build of one leaves in the
    /// cache, the next build of the default branch uses.
    public var protectedRefs: [String]?
    /// Limits of this project's build containers, lower than the agent's (a higher one is
    /// cut down to the agent's); nil fields take the agent's.
    public var limits: BuildLimits?
    /// The group (a namespace of the registry) the project belongs to: the group's members
    /// hold their role on the project too (docs/roles.md). nil: members of the project only.
    public var group: String?
    /// Repositories of other registries (`host[:port]/path`) the image is pushed to after the
    /// farm's registry, with the same tag, using the project's (else its group's) registry
    /// credential for that host (`…/credentials/registry/{host}`). Nil: the farm's only.
    public var pushTo: [String]?
    /// How many of its builds (with their logs) Kiln keeps: nil keeps the defaults, the last
    /// 500 and every build of the last 90 days (``effectiveRetention``; docs/retention.md).
    public var retention: BuildRetention?
    /// The folders the build caches into, as container paths (`/root/.m2`, `/root/.gradle`,
    /// `/root/.npm`): each is mounted from the project's cache on the agent when the build's
    /// `mvncache` is on (docs/agents.md, "Caches"). Nil: `["/root/.m2"]` (``effectiveCaches``);
    /// empty: none.
    public var caches: [String]?
    /// Whether a build whose inputs equal an earlier successful build's reuses that build's
    /// image instead of compiling (docs/reuse.md). Nil: yes; false: every build is a real one.
    public var reuseBuilds: Bool?
    public var createdAt: Date?

    public init(
        name: String, repository: String, buildImage: String, buildCommand: String,
        dockerfile: String = "Dockerfile", context: String = ".", defaultBranch: String = "main",
        labels: [String] = [], supersede: Supersede? = nil, maxConcurrent: Int? = nil,
        branches: [String]? = nil, webhookSecret: String? = nil, pipeline: [PipelineStep]? = nil,
        protectedRefs: [String]? = nil, limits: BuildLimits? = nil, createdAt: Date? = nil
    ) {
        self.name = name
        self.repository = repository
        self.buildImage = buildImage
        self.buildCommand = buildCommand
        self.dockerfile = dockerfile
        self.context = context
        self.defaultBranch = defaultBranch
        self.labels = labels
        self.supersede = supersede
        self.maxConcurrent = maxConcurrent
        self.branches = branches
        self.webhookSecret = webhookSecret
        self.pipeline = pipeline
        self.protectedRefs = protectedRefs
        self.limits = limits
        self.createdAt = createdAt
    }

    enum CodingKeys: String, CodingKey {
        case name, repository, buildImage, buildCommand, dockerfile, context, defaultBranch, labels, supersede, maxConcurrent, branches, webhookSecret, pipeline, protectedRefs, limits, group, pushTo, retention, caches, reuseBuilds, createdAt
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        repository = try c.decode(String.self, forKey: .repository)
        buildImage = try c.decode(String.self, forKey: .buildImage)
        buildCommand = try c.decode(String.self, forKey: .buildCommand)
        dockerfile = try c.decodeIfPresent(String.self, forKey: .dockerfile) ?? "Dockerfile"
        context = try c.decodeIfPresent(String.self, forKey: .context) ?? "."
        defaultBranch = try c.decodeIfPresent(String.self, forKey: .defaultBranch) ?? "main"
        labels = try c.decodeIfPresent([String].self, forKey: .labels) ?? []
        supersede = try c.decodeIfPresent(Supersede.self, forKey: .supersede)
        maxConcurrent = try c.decodeIfPresent(Int.self, forKey: .maxConcurrent)
        branches = try c.decodeIfPresent([String].self, forKey: .branches)
        webhookSecret = try c.decodeIfPresent(String.self, forKey: .webhookSecret)
        pipeline = try c.decodeIfPresent([PipelineStep].self, forKey: .pipeline)
        protectedRefs = try c.decodeIfPresent([String].self, forKey: .protectedRefs)
        limits = try c.decodeIfPresent(BuildLimits.self, forKey: .limits)
        group = try c.decodeIfPresent(String.self, forKey: .group)
        pushTo = try c.decodeIfPresent([String].self, forKey: .pushTo)
        retention = try c.decodeIfPresent(BuildRetention.self, forKey: .retention)
        caches = try c.decodeIfPresent([String].self, forKey: .caches)
        reuseBuilds = try c.decodeIfPresent(Bool.self, forKey: .reuseBuilds)
        createdAt = try c.decodeIfPresent(Date.self, forKey: .createdAt)
    }

    /// The cache folders a build mounts (with `mvncache` on): `caches`, or the Maven cache
    /// alone when the project names none.
    public var effectiveCaches: [String] { caches ?? Self.defaultCaches }
    /// The caches of a project that declares none: Maven's, as before projects declared them.
    public static let defaultCaches = ["/root/.m2"]

    /// The repository its images go to in the farm's registry: `GROUP/NAME` in a group,
    /// `NAME` otherwise. The registry's token service maps it back to the project and group.
    public var repositoryName: String { group.map { "\($0)/\(name)" } ?? name }

    /// The project as the API and the console show it: the webhook secret left out, and a
    /// password a record saved before the URL rule still holds in its repository URL shown as
    /// `***` (docs/secrets.md: move it into `kiln credential set git`).
    public var redacted: Project {
        var p = forTask
        p.repository = Validation.withoutPassword(repository) ?? repository
        return p
    }

    /// The project as a task carries it to the agent: the webhook secret left out, the
    /// repository URL as it is (the agent needs it to fetch, and keeps user info out of logs).
    public var forTask: Project {
        var p = self
        p.webhookSecret = nil
        return p
    }

    /// The project as someone below `master` sees it: besides the webhook secret, the values
    /// of its pipeline's `env` maps and `url`s (tokens often hide there) are masked; the
    /// names stay. (Issue 13 moves such secrets into the sealed store.)
    public var maskedForViewers: Project {
        var p = redacted
        p.pipeline = pipeline?.map { step in
            var s = step
            for (key, value) in s.settings {
                switch (key, value) {
                case ("env", .object(let map)): s.settings[key] = .object(map.mapValues { _ in .string("***") })
                case ("url", .string): s.settings[key] = .string("***")
                default: break
                }
            }
            return s
        }
        return p
    }

    /// Whether a push to `branch` (a name without `refs/heads/`) builds this project.
    public func builds(branch: String) -> Bool {
        (branches ?? [defaultBranch]).contains { Project.glob($0, matches: branch) }
    }

    /// Whether builds of `ref` use the protected cache: the default branch and the refs
    /// `protectedRefs` names. `ref` is compared as given and without `refs/heads/`, so
    /// `main` and `refs/heads/main` are the same branch; a pattern naming `refs/tags/…`
    /// matches tags given that way.
    public func isProtected(ref: String) -> Bool {
        let branch = ref.hasPrefix("refs/heads/") ? String(ref.dropFirst("refs/heads/".count)) : ref
        if branch == defaultBranch { return true }
        return (protectedRefs ?? []).contains { Project.glob($0, matches: branch) || Project.glob($0, matches: ref) }
    }

    /// `*` matches any run of characters, `/` included; everything else matches itself.
    public static func glob(_ pattern: String, matches s: String) -> Bool {
        let p = Array(pattern.utf8), t = Array(s.utf8)
        var pi = 0, ti = 0, star = -1, mark = 0
        while ti < t.count {
            if pi < p.count && p[pi] != UInt8(ascii: "*") && p[pi] == t[ti] {
                pi += 1; ti += 1
            } else if pi < p.count && p[pi] == UInt8(ascii: "*") {
                star = pi; mark = ti; pi += 1
            } else if star >= 0 {
                pi = star + 1; mark += 1; ti = mark
            } else {
                return false
            }
        }
        while pi < p.count && p[pi] == UInt8(ascii: "*") { pi += 1 }
        return pi == p.count
    }

    /// Checks every field; throws `KilnError.invalid` naming the first bad one (the first of
    /// ``problems()``).
    public func validate() throws {
        try problems().throwFirst()
    }

    /// Every field's problem, each checked on its own, in the order `validate()` reports them;
    /// `field` is the field's JSON name. The console's project form shows each beside its field.
    public func problems() -> [FieldProblem] {
        let checks: [(String, () throws -> Void)] = [
            ("name", { try Validation.projectName(name) }),
            ("repository", {
                try Validation.repositoryURL(repository)
                try Validation.repositoryURLHasNoPassword(repository)
            }),
            ("buildImage", { try Validation.imageReference(buildImage, field: "buildImage") }),
            ("buildCommand", {
                if buildCommand.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
                    throw KilnError.invalid("buildCommand is empty: give the command that builds the project, for example \"mvn -B -q package\"")
                }
                if buildCommand.contains("\0") { throw KilnError.invalid("buildCommand contains a NUL byte") }
            }),
            ("dockerfile", { try Validation.relativePath(dockerfile, field: "dockerfile") }),
            ("context", { try Validation.relativePath(context, field: "context") }),
            ("defaultBranch", { try Validation.ref(defaultBranch, field: "defaultBranch") }),
            ("labels", { for l in labels { try Validation.label(l) } }),
            ("branches", {
                guard let patterns = branches else { return }
                if patterns.isEmpty || patterns.count > 100 { throw KilnError.invalid("branches must list 1 to 100 patterns, for example [\"main\", \"release/*\"]; leave it out to build the default branch only") }
                for p in patterns { try Validation.ref(p.replacingOccurrences(of: "*", with: "x"), field: "branches pattern") }
            }),
            ("webhookSecret", {
                if let secret = webhookSecret, !secret.isEmpty, secret.utf8.count > 256 || secret.utf8.contains(where: { $0 < 0x21 || $0 == 0x7f }) {
                    throw KilnError.invalid("webhookSecret must be 1 to 256 visible characters without spaces (GitLab's \"Secret token\" of the webhook)")
                }
            }),
            ("protectedRefs", {
                guard let patterns = protectedRefs else { return }
                if patterns.count > 100 { throw KilnError.invalid("protectedRefs lists \(patterns.count) patterns: use at most 100, for example [\"release/*\", \"refs/tags/v*\"]") }
                for p in patterns { try Validation.ref(p.replacingOccurrences(of: "*", with: "x"), field: "protectedRefs pattern") }
            }),
            ("limits", { try limits?.validate(field: "limits") }),
            ("retention", { try retention?.validate() }),
            ("group", { if let group { try Validation.projectName(group, what: "group name") } }),
            ("pushTo", {
                guard let targets = pushTo else { return }
                if targets.count > 10 { throw KilnError.invalid("pushTo lists \(targets.count) repositories: use at most 10") }
                for t in targets {
                    try Validation.imageReference(t, field: "pushTo")
                    guard let slash = t.firstIndex(of: "/"), t[..<slash].contains(where: { $0 == "." || $0 == ":" }) || t.hasPrefix("localhost/"),
                          !t.contains("@"), !t[t.index(after: slash)...].contains(":") else {
                        throw KilnError.invalid("pushTo entry '\(Validation.printable(t))' is not a repository of another registry: give host[:port]/path without a tag (registry.example.com/team/app); the build's tag is used")
                    }
                }
            }),
            ("caches", { if let caches { try Validation.caches(caches) } }),
            ("maxConcurrent", {
                if let m = maxConcurrent, !(1...1000).contains(m) {
                    throw KilnError.invalid("maxConcurrent \(m) is out of range: use 1 to 1000 builds of this project at once, or leave it out for no limit")
                }
            }),
        ]
        return checks.compactMap { FieldProblem.check($0.0, $0.1) }
    }
}
