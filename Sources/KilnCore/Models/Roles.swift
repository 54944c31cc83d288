import Foundation

/// A member's role on a resource, as in GitLab (and LeEngine before Kiln): each role can do
/// what the ones below it can, and more. The full table is ``Permission`` (and docs/roles.md).
public enum Role: String, Codable, Sendable, CaseIterable, Comparable {
    case guest, reporter, developer, master, owner

    public static func < (a: Role, b: Role) -> Bool { a.rank < b.rank }

    var rank: Int { Role.allCases.firstIndex(of: self)! }

    /// The role named `text`, or a 400 that lists the five.
    public static func parse(_ text: String) throws -> Role {
        guard let role = Role(rawValue: text) else {
            throw KilnError.invalid("role '\(Validation.printable(text))' does not exist: use one of \(Role.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return role
    }
}

/// The kinds of resource that have members.
///
/// A project is a code build (LeEngine's term): repository, build settings and pipeline. An
/// app is what a pipeline deploys; it belongs to the project whose pipeline first deployed it.
/// A group is a namespace of the registry (`GROUP/NAME`) holding images; its members hold
/// their role on every project in the group and on every image in it.
public enum ResourceKind: String, Codable, Sendable, CaseIterable {
    case project, app, group

    /// The path segment of the API (`/api/v1/projects/...`).
    public var plural: String { rawValue + "s" }

    public init?(plural: String) {
        guard let kind = ResourceKind.allCases.first(where: { $0.plural == plural }) else { return nil }
        self = kind
    }
}

/// What a caller may do to a resource, each with the least role that may do it. Admins may do
/// everything on every resource; a resource a caller has no role on does not exist for them
/// (the API answers 404, as for a resource that does not exist).
public enum Permission: String, Sendable, CaseIterable {
    /// See that the resource exists, its name and settings (never its secrets).
    case view
    /// Read its records: builds, logs, activity, app versions and instances; pull private images.
    case read
    /// Start, cancel and rebuild builds; push images.
    case build
    /// List the names of the secrets and credentials builds get (never a value).
    case listSecrets
    /// Deploy, roll back, retire and scale; point domains at an app.
    case deploy
    /// Change settings and visibility; add, change and remove members below owner.
    case manage
    /// Set and remove secrets and credentials (docs/secrets.md); nobody reads them back.
    case setSecrets
    /// Add, demote or remove owners; transfer ownership; delete the resource.
    case own

    /// The least role that has this permission.
    public var minimumRole: Role {
        switch self {
        case .view: .guest
        case .read: .reporter
        case .build, .listSecrets: .developer
        case .deploy, .manage, .setSecrets: .master
        case .own: .owner
        }
    }

    /// What it covers, for `kiln help roles`, the console and docs/roles.md.
    public var summary: String {
        switch self {
        case .view: "see the resource and its settings (never its secrets)"
        case .read: "read builds, logs, activity, app versions and instances; pull private images"
        case .build: "start, cancel and rebuild builds; push images"
        case .listSecrets: "list the names of its secrets and credentials (never their values)"
        case .deploy: "deploy, roll back, retire and scale apps; point domains at them"
        case .manage: "change settings and visibility; add, change and remove members (not owners)"
        case .setSecrets: "set and remove its secrets and credentials (write-only: nobody reads them back); put a project into a group (it gets the group's secrets)"
        case .own: "add, demote and remove owners; transfer ownership; delete"
        }
    }

    /// The role table as text: one row per permission, one column per role, then what each
    /// permission covers (`covers: false` leaves that column out, for `--help`, which wraps
    /// long lines).
    public static func table(covers: Bool = true) -> String {
        let roles = Role.allCases
        var lines = ["permission  " + roles.map { $0.rawValue.padding(toLength: 10, withPad: " ", startingAt: 0) }.joined() + (covers ? "what it covers" : "")]
        for p in Permission.allCases {
            let marks = roles.map { ($0 >= p.minimumRole ? "yes" : "-").padding(toLength: 10, withPad: " ", startingAt: 0) }.joined()
            lines.append(p.rawValue.padding(toLength: 12, withPad: " ", startingAt: 0) + marks + (covers ? p.summary : ""))
        }
        return lines.map { $0.trimmingCharacters(in: .whitespaces) }.joined(separator: "\n")
    }

    public static var table: String { table() }
}

/// The members of one resource: users with their roles and, for an app, the projects whose
/// pipelines may deploy into it (with `master`). Kept whole in one etcd key per resource,
/// changed by guarded read-modify-write, so the rule "a resource keeps at least one owner"
/// is checked on the value it writes.
public struct Members: Codable, Sendable, Equatable {
    public var users: [String: Role]
    /// Apps only: other projects allowed to deploy into the app (by their pipelines).
    public var projects: [String: Role]?

    public init(users: [String: Role] = [:], projects: [String: Role]? = nil) {
        self.users = users
        self.projects = projects
    }

    public var owners: [String] { users.filter { $0.value == .owner }.map(\.key).sorted() }

    /// Sets `user`'s role as `actor` (whose own role is `actorRole`, or nil for an admin)
    /// asks. Masters add and change members below owner; only owners touch owners; the last
    /// owner stays.
    public mutating func set(_ user: String, to role: Role, by actorRole: Role?) throws {
        let current = users[user]
        if let actorRole, actorRole < .owner, role == .owner || current == .owner {
            throw KilnError.forbidden("only an owner may add, demote or remove an owner")
        }
        if current == .owner, role != .owner, owners.count == 1 {
            throw KilnError.conflict("'\(user)' is the last owner: make another member owner first")
        }
        users[user] = role
    }

    /// Removes `user`, with the same rules as ``set(_:to:by:)``.
    public mutating func remove(_ user: String, by actorRole: Role?) throws {
        guard let current = users[user] else { throw KilnError.notFound("'\(Validation.printable(user))' is not a member") }
        if let actorRole, actorRole < .owner, current == .owner {
            throw KilnError.forbidden("only an owner may remove an owner")
        }
        if current == .owner, owners.count == 1 {
            throw KilnError.conflict("'\(user)' is the last owner: make another member owner first")
        }
        users[user] = nil
    }
}

/// One member as the API lists them.
public struct Member: Codable, Sendable, Equatable {
    public var user: String
    public var role: Role
    public init(user: String, role: Role) {
        self.user = user
        self.role = role
    }
}

/// The body of `PUT …/members/{user}`.
public struct MemberRequest: Codable, Sendable {
    public var role: String
    public init(role: String) { self.role = role }
}

/// A group: a namespace of the registry (`GROUP/NAME`) and of projects, at `/kiln/groups/{name}`.
/// Its members hold their role on every project and image in it.
public struct Group: Codable, Sendable, Equatable {
    public enum Visibility: String, Codable, Sendable { case `private`, `public` }
    public var name: String
    /// Public: anyone may pull its images, without logging in. Private (the default): only
    /// reporters and above.
    public var visibility: Visibility
    public var createdAt: Date

    public init(name: String, visibility: Visibility = .private, createdAt: Date = Date()) {
        self.name = name
        self.visibility = visibility
        self.createdAt = createdAt
    }
}

/// The body of `POST /api/v1/groups` and `PUT /api/v1/groups/{name}`.
public struct GroupRequest: Codable, Sendable {
    public var name: String?
    public var visibility: Group.Visibility?
    public init(name: String? = nil, visibility: Group.Visibility? = nil) {
        self.name = name
        self.visibility = visibility
    }
}
