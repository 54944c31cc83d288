import Foundation

/// How many of a project's builds Kiln keeps (issue 14; docs/retention.md): the last
/// `keepBuilds`, and every build younger than `keepDays`. A build is pruned only when
/// both rules let it go, and never while it is not final, while its pipeline run waits or
/// runs, or while a version of an app refers to it (the leader's pruner reads the apps).
///
/// A missing field decodes as its default, so `{"keepDays": 30}` keeps the last 500 and
/// every build of the last 30 days.
public struct BuildRetention: Codable, Sendable, Equatable {
    /// The last this many builds of the project are kept, however old.
    public var keepBuilds: Int
    /// Every build younger than this many days is kept, however many.
    public var keepDays: Int

    public static let defaultKeepBuilds = 500
    public static let defaultKeepDays = 90
    /// What a project without settings of its own gets.
    public static let defaults = BuildRetention()

    /// The bounds `validate()` holds. At least a day is always kept: a build that has just
    /// ended may still be having its log archived, and a day is the least anyone would look
    /// back. 100,000 builds is far past what a project needs, and keeps one project from
    /// filling etcd by itself (docs/retention.md sizes etcd for these numbers).
    public static let keepBuildsRange = 0...100_000
    public static let keepDaysRange = 1...3650

    public init(keepBuilds: Int = BuildRetention.defaultKeepBuilds, keepDays: Int = BuildRetention.defaultKeepDays) {
        self.keepBuilds = keepBuilds
        self.keepDays = keepDays
    }

    enum CodingKeys: String, CodingKey { case keepBuilds, keepDays }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        keepBuilds = try c.decodeIfPresent(Int.self, forKey: .keepBuilds) ?? BuildRetention.defaultKeepBuilds
        keepDays = try c.decodeIfPresent(Int.self, forKey: .keepDays) ?? BuildRetention.defaultKeepDays
    }

    /// The age past which a build may go, seen at `now`.
    public func cutoff(now: Date) -> Date { now.addingTimeInterval(-Double(keepDays) * 86_400) }

    /// Throws `KilnError.invalid` naming the field, its bounds and an example.
    public func validate(field: String = "retention") throws {
        guard BuildRetention.keepBuildsRange.contains(keepBuilds) else {
            throw KilnError.invalid("\(field).keepBuilds \(keepBuilds) is out of range: keep 0 to 100000 of the project's last builds (default 500; 0 keeps by age only)")
        }
        guard BuildRetention.keepDaysRange.contains(keepDays) else {
            throw KilnError.invalid("\(field).keepDays \(keepDays) is out of range: keep every build of the last 1 to 3650 days (default 90)")
        }
    }

    /// One line for people: `the last 500 builds and every build of the last 90 days`.
    public var summary: String {
        "the last \(keepBuilds) build\(keepBuilds == 1 ? "" : "s") and every build of the last \(keepDays) day\(keepDays == 1 ? "" : "s")"
    }
}

extension Project {
    /// The retention this project's builds are pruned by: its own, else the defaults.
    public var effectiveRetention: BuildRetention { retention ?? .defaults }
}

extension BuildID {
    /// When a build id says its build was made (the milliseconds after its `b`), or nil for an
    /// id not made by ``generate(now:)``. Ids sort by this time, so a walk over a project's
    /// index from its oldest end may stop at the first id younger than a cutoff.
    public static func createdAt(of id: String) -> Date? {
        let u = Array(id.utf8)
        guard u.count >= 13, u[0] == UInt8(ascii: "b"), u[12] == UInt8(ascii: "-"),
              let ms = UInt64(String(decoding: u[1..<12], as: UTF8.self), radix: 36) else { return nil }
        return Date(timeIntervalSince1970: Double(ms) / 1000)
    }
}

/// How many versions an app keeps in its record (``App/keepVersions``) and which go.
extension App {
    public static let defaultKeepVersions = 10
    public static let keepVersionsRange = 1...100

    /// The number of versions this app keeps: its own setting, else 10.
    public var effectiveKeepVersions: Int { keepVersions ?? App.defaultKeepVersions }

    /// Versions that run (deploying, ready, live, retiring): never pruned, whatever the setting.
    public var runningVersions: [AppVersion] { versions.filter { $0.state != .retired && $0.state != .failed } }

    /// The app without its oldest stopped (retired or failed) versions beyond
    /// ``effectiveKeepVersions``. Versions that run stay even past the number; so does the
    /// newest version, whatever its state, since the next version's number follows it.
    /// Retired versions that stay are the roll-back candidates: their builds are not pruned.
    public func prunedVersions() -> (app: App, removed: [AppVersion]) {
        var excess = versions.count - effectiveKeepVersions
        guard excess > 0 else { return (self, []) }
        let newest = versions.map(\.number).max()
        var app = self, removed: [AppVersion] = []
        app.versions = versions.sorted { $0.number < $1.number }.filter { v in
            guard excess > 0, v.number != newest, v.state == .retired || v.state == .failed else { return true }
            excess -= 1
            removed.append(v)
            return false
        }
        return (app, removed)
    }

    /// Checks a new ``keepVersions`` before it is set: out of bounds is 400; fewer than the
    /// versions that run now is 409 with the reason, since those are never pruned and the
    /// setting would not hold.
    public func checkKeepVersions(_ n: Int) throws {
        guard App.keepVersionsRange.contains(n) else {
            throw KilnError.invalid("keepVersions \(n) is out of range: keep 1 to 100 versions of app \(name) (default \(App.defaultKeepVersions))")
        }
        let running = runningVersions
        guard n >= running.count else {
            let list = running.sorted { $0.number > $1.number }.map { "v\($0.number) \($0.state.rawValue)" }.joined(separator: ", ")
            throw KilnError.conflict("keepVersions \(n) is below the \(running.count) versions of app \(name) that run (\(list)): running versions are never pruned, so keep at least \(running.count), or retire versions first (the pipeline's retire step)")
        }
    }
}

/// The body and answer of `GET|PUT /api/v1/apps/{name}/retention`.
public struct AppRetention: Codable, Sendable, Equatable {
    /// How many versions the app's record keeps (1 to 100; default 10).
    public var keepVersions: Int
    /// Answers only: the versions the record holds now.
    public var versions: [Int]?
    /// Answers of a change only: the versions it pruned.
    public var pruned: [Int]?

    public init(keepVersions: Int, versions: [Int]? = nil, pruned: [Int]? = nil) {
        self.keepVersions = keepVersions
        self.versions = versions
        self.pruned = pruned
    }
}
