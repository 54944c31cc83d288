import Foundation

/// Where a build is in its life. Final states never change again.
public enum BuildStatus: String, Codable, Sendable, CaseIterable {
    case queued, assigned, running, succeeded, failed, cancelled

    public var isFinal: Bool { self == .succeeded || self == .failed || self == .cancelled }
}

/// The four steps of a build, in order.
public enum StepName: String, Codable, Sendable, CaseIterable {
    case fetch, compile, image, push
}

public enum StepStatus: String, Codable, Sendable {
    case pending, running, succeeded, failed, cancelled, skipped
}

/// One timed step of a build.
public struct BuildStep: Codable, Sendable, Equatable {
    public var name: StepName
    public var status: StepStatus
    public var startedAt: Date?
    public var finishedAt: Date?
    public var durationMs: Int?
    public var error: String?
    /// Why a step was skipped, or what it did instead of its usual work (a reused build's
    /// compile and image: `reused the image of build …`; its push: the tag moved in the registry).
    public var note: String?

    public init(name: StepName, status: StepStatus = .pending, startedAt: Date? = nil, finishedAt: Date? = nil, durationMs: Int? = nil, error: String? = nil) {
        self.name = name
        self.status = status
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.durationMs = durationMs
        self.error = error
    }
}

/// A request to build a project at a ref (or an exact commit), and everything that
/// happened to it. Stored at `/kiln/builds/{id}`.
public struct Build: Codable, Sendable, Equatable {
    public var id: String
    public var project: String
    public var status: BuildStatus
    public var ref: String
    public var commit: String?
    public var tag: String?
    public var mvncache: Bool
    /// The full pushed reference, `registry/project:tag`: for people (the tag may move).
    public var image: String?
    /// The manifest digest the registry gave the push, `sha256:…`.
    public var digest: String?
    /// Where the image was pushed besides the farm's registry (`Project.pushTo`), each as
    /// `host/path:tag@sha256:…`. Nil: nowhere else.
    public var pushedTo: [String]?
    public var agent: String?
    public var attempt: Int
    public var error: String?
    public var steps: [BuildStep]
    public var createdAt: Date
    public var startedAt: Date?
    public var finishedAt: Date?
    /// Who or what asked for it (`cli`, `api`, `webhook`, `kiln up`).
    public var trigger: String?
    /// True when a person's request named the commit (a webhook's commit is the pushed head of
    /// its ref): such a build holds no protected ref, whatever its ref says, since anyone who may
    /// build could pin a feature branch's commit on `main` and so reach protected-only secrets.
    public var commitPinnedByRequest: Bool?

    /// The ref whose protection this build may claim (protected-only secrets, in the grant and
    /// the pipeline); nil when a request pinned its commit.
    public var protectionRef: String? { commitPinnedByRequest == true ? nil : ref }
    public var cancelRequested: Bool?
    /// Higher goes first; default 0.
    public var priority: Int?
    /// Why a queued build is not assigned yet (no live agent has its labels), if it is not
    /// just waiting for room.
    public var waiting: String?
    /// The post-build pipeline's latest run (deploy, lb, retire, notify), if the project has
    /// a pipeline and the build succeeded. Its failure leaves the build `succeeded`.
    public var deploy: PipelineRun?
    /// Set once the leader has moved the log (or its first part) out of etcd into the log
    /// archive (``ArchivedLog``; docs/logs.md). Nil: every line is still in etcd.
    public var logArchive: ArchivedLog?
    /// The repository's branches and tags as this build's fetch found them, newest commit
    /// first, bounded (``RepositoryRefs``); nil when the agent did not publish them with this
    /// build (they had not changed). Written by the agent: a suggestion for the build form only.
    public var repositoryRefs: [String]?
    /// Asked to build for real even when an earlier build had the same inputs (`kiln build
    /// --rebuild`, `"rebuild": true`). Nil: reuse is allowed (docs/reuse.md).
    public var rebuild: Bool?
    /// What this build's image is made of, read by the agent before compiling, with the key
    /// builds of the same inputs share (``BuildInputs``). Nil: not read (an older agent, or an
    /// input could not be read, such as a build image the engine does not hold).
    public var inputs: BuildInputs?
    /// The build whose image this one reused instead of compiling: the registry got this
    /// build's tag for that build's manifest (same digest). Nil: a real build.
    public var reusedFrom: String?

    public init(id: String, project: String, ref: String, commit: String? = nil, tag: String? = nil, mvncache: Bool = true, createdAt: Date = Date(), trigger: String? = nil) {
        self.id = id
        self.project = project
        self.status = .queued
        self.ref = ref
        self.commit = commit
        self.tag = tag
        self.mvncache = mvncache
        self.attempt = 0
        self.steps = StepName.allCases.map { BuildStep(name: $0) }
        self.createdAt = createdAt
        self.trigger = trigger
    }

    /// The pushed image by its digest, `registry/project@sha256:…`: what deploys and roll
    /// backs run, since the tag may have been pushed again since (a second build with the
    /// same `--tag`, or anyone with push rights). Nil without an image or a digest.
    public var imageByDigest: String? {
        guard let image, let digest, digest.hasPrefix("sha256:"), digest.count == 71,
              digest.dropFirst(7).allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else { return nil }
        return Build.repository(of: image) + "@" + digest
    }

    /// The image a deploy of this build of `project` may run: `registry/project@sha256:…`.
    /// An agent writes the build record, so a hostile one could name another project's image
    /// (which the deployer, allowed to pull any, would run) or another registry (which would
    /// receive the deployer's credentials): both are refused. `registry` nil checks the
    /// repository only.
    /// `repository`: the project's ``Project/repositoryName``.
    public func deployableImage(repository name: String, registry: String?) throws -> String {
        guard let pinned = imageByDigest else {
            throw KilnError.invalid("build \(id) recorded no digest for \(image ?? "its image"): deploys pull by digest only; build it again")
        }
        let repository = Build.repository(of: pinned)
        let expected = registry.map { "\($0)/\(name)" }
        guard repository == expected ?? repository, repository.hasSuffix("/" + name) else {
            throw KilnError.invalid("build \(id) of \(project) names the image \(pinned), not one of \(expected ?? "repository \(name)"): refused (a build record names its own project's image in the farm's registry)")
        }
        return pinned
    }

    /// `host:port/path` of `host:port/path:tag` or `host:port/path@digest` (a ':' before the
    /// last '/' is the port's, not a tag's).
    public static func repository(of image: String) -> String {
        var name = Substring(image)
        if let at = name.firstIndex(of: "@") { name = name[..<at] }
        let lastSlash = name.lastIndex(of: "/") ?? name.startIndex
        if let colon = name[lastSlash...].lastIndex(of: ":") { name = name[..<colon] }
        return String(name)
    }

    public var durationMs: Int? {
        guard let s = startedAt, let f = finishedAt else { return nil }
        return Int((f.timeIntervalSince(s) * 1000).rounded())
    }
}

/// Build identifiers: time-ordered, so a listing sorted by id is newest last.
public enum BuildID {
    /// `b` + 11 base-36 digits of milliseconds since 1970 + 12 random hex digits, e.g.
    /// `b0mj4x2k9q1-3fa2c1d0e9b8`. (6 digits, 24 bits, collided about once in 30 runs of 1,000
    /// ids made in the same few milliseconds: the birthday bound.)
    public static func generate(now: Date = Date()) -> String {
        let ms = UInt64(max(0, now.timeIntervalSince1970 * 1000))
        var t = String(ms, radix: 36)
        while t.count < 11 { t = "0" + t }
        let r = String(UInt64.random(in: 0..<(1 << 48)), radix: 16)
        return "b\(t)-\(String(repeating: "0", count: 12 - r.count))\(r)"
    }

    /// Build ids are used in etcd keys and URLs: letters, digits and `-` only.
    public static func isValid(_ id: String) -> Bool {
        !id.isEmpty && id.count <= 64 && id.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 }
    }
}
