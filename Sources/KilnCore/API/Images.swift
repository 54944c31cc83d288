import Foundation

/// A group's image repositories as `GET /api/v1/groups/{group}/images` and the console's group
/// page show them: each tag with its digest and size (from the registry), the build that
/// pushed that digest and the app versions that run it (from Kiln's records).
public struct GroupImages: Codable, Sendable, Equatable {
    public var group: Group
    /// The group's projects the caller may see.
    public var projects: [String]
    public var repositories: [ImageRepository]
    /// Repositories beyond the first ``maxRepositories`` (the group's projects' first, then by
    /// name), not read: a page view must not read a whole registry. Nil: none.
    public var moreRepositories: Int?
    public static let maxRepositories = 50
    /// Where the tags came from: the registry's own API, or, when the scheduler was started
    /// without `--registry-url` (or the registry did not answer), the build records only
    /// (`registryError` says why), which know no sizes and no tags pushed by hand.
    public var fromRegistry: Bool
    public var registryError: String?

    public init(group: Group, projects: [String], repositories: [ImageRepository], fromRegistry: Bool, registryError: String? = nil) {
        self.group = group
        self.projects = projects
        self.repositories = repositories
        self.fromRegistry = fromRegistry
        self.registryError = registryError
    }
}

/// One repository of the registry, `GROUP/NAME`.
public struct ImageRepository: Codable, Sendable, Equatable {
    public var name: String
    /// The project whose images these are (its ``Project/repositoryName``), if any.
    public var project: String?
    public var tags: [ImageTag]
    /// Tags beyond the first ``ImageRepository/maxTags`` (newest names last) are not shown.
    public var moreTags: Int?

    public static let maxTags = 100

    public init(name: String, project: String?, tags: [ImageTag], moreTags: Int? = nil) {
        self.name = name
        self.project = project
        self.tags = tags
        self.moreTags = moreTags
    }
}

/// One tag of a repository.
public struct ImageTag: Codable, Sendable, Equatable {
    public var tag: String
    /// `sha256:…` of its manifest (nil: the registry could not say).
    public var digest: String?
    /// Bytes of its config and layers (nil: unknown, the build records do not say).
    public var size: Int64?
    /// The newest build whose push recorded this digest (or, without the registry, this tag).
    public var build: String?
    /// App versions whose instances run this digest (deploying, ready, live or retiring).
    public var runningIn: [ImageUse]
    /// The multi-platform tags (indexes) of the repository that list this digest as one of
    /// their platforms: it cannot be deleted before them. Nil: none.
    public var platformOf: [String]?
    /// Why the manifest could not be read, if it could not.
    public var error: String?

    public init(tag: String, digest: String?, size: Int64? = nil, build: String? = nil, runningIn: [ImageUse] = [], error: String? = nil) {
        self.tag = tag
        self.digest = digest
        self.size = size
        self.build = build
        self.runningIn = runningIn
        self.error = error
    }
}

/// An app version that runs an image.
public struct ImageUse: Codable, Sendable, Equatable {
    /// The app's name, or ``hidden`` for an app the viewer has no role on.
    public var app: String
    public static let hidden = "(an app you have no role on)"
    public var version: Int
    public var state: VersionState

    public init(app: String, version: Int, state: VersionState) {
        self.app = app
        self.version = version
        self.state = state
    }
}

/// The answer of `DELETE /api/v1/groups/{group}/images/{image}/tags/{tag}`: the registry
/// deletes a manifest by digest, so every tag naming the same digest goes with it.
public struct DeletedImage: Codable, Sendable, Equatable {
    public var repository: String
    public var digest: String
    /// Every tag that named the digest, the one asked for included.
    public var tags: [String]

    public init(repository: String, digest: String, tags: [String]) {
        self.repository = repository
        self.digest = digest
        self.tags = tags
    }
}
