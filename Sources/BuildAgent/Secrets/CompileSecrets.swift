import KilnCore

/// Which of a build's secrets its build command gets (as environment variables or as files
/// under `/run/secrets/`), and why each of the others is left out. Pure.
///
/// Rules, in order, per secret:
/// 1. A name that is not an environment variable name (`SecretRules.name`) is left out: it
///    would become a variable nobody can read, or a path (`../x`) under /run/secrets.
/// 2. A name already given is left out: the scheduler lists the project's value before the
///    group's, and the first one wins.
/// 3. A name Kiln sets itself (`kilnNames`) is left out: the build relies on those.
/// 4. A secret for protected refs only (`protectedOnly`) is given only to a build that
///    counts as one of a protected ref (`MavenCachePlacement.isProtectedBuild`): its ref is
///    protected, and a pinned commit is on that ref. The scheduler already withheld such
///    secrets from unprotected refs; only the agent, after the fetch, knows the pinned commit.
enum CompileSecrets {
    /// Variables every compile container gets from Kiln.
    static let kilnNames: Set<String> = ["KILN_BUILD", "KILN_PROJECT"]

    struct Plan: Equatable {
        var given: [BuildSecret] = []
        /// Name (printable) and why it was left out.
        var leftOut: [(name: String, reason: String)] = []

        var environment: [String: String] {
            Dictionary(given.filter { !$0.file }.map { ($0.name, $0.value) }, uniquingKeysWith: { first, _ in first })
        }
        var files: [BuildSecret] { given.filter(\.file) }

        static func == (a: Plan, b: Plan) -> Bool {
            a.given == b.given && a.leftOut.map(\.name) == b.leftOut.map(\.name) && a.leftOut.map(\.reason) == b.leftOut.map(\.reason)
        }
    }

    static func plan(_ secrets: [BuildSecret], protectedBuild: Bool, ref: String, pinnedCommit: String?) -> Plan {
        var plan = Plan()
        var seen: Set<String> = []
        for secret in secrets {
            let name = Validation.printable(secret.name)
            if (try? SecretRules.name(secret.name)) == nil {
                plan.leftOut.append((name, "not an environment variable name"))
            } else if seen.contains(secret.name) {
                plan.leftOut.append((name, "given twice; the first value is used"))
            } else if kilnNames.contains(secret.name) {
                plan.leftOut.append((name, "Kiln sets \(secret.name) itself"))
            } else if secret.protectedOnly && !protectedBuild {
                let why = pinnedCommit.map { "the pinned commit \($0) is not on \(ref)" } ?? "\(ref) is not a protected ref"
                plan.leftOut.append((name, "for protected refs only, and \(why)"))
            } else {
                plan.given.append(secret)
            }
            seen.insert(secret.name)
        }
        return plan
    }
}

/// The registry part of image references, as the container engine reads them.
enum ImageRegistry {
    /// The registry host of `image` (`host[:port]`, lowercased): its first component when that
    /// has a '.' or a ':' or is `localhost`, else `docker.io` (Docker's rule: `maven:3` and
    /// `team/app` are Docker Hub's).
    static func host(of image: String) -> String {
        guard let slash = image.firstIndex(of: "/") else { return "docker.io" }
        let first = image[..<slash]
        guard first.contains(".") || first.contains(":") || first == "localhost" else { return "docker.io" }
        return first.lowercased()
    }
}
