import KilnCore

/// Where an agent gets the secrets of a build it holds: the project's git credential,
/// registry logins and build secrets (`BuildSecrets`). `SchedulerSecretsClient` asks the
/// schedulers; an agent started without `--scheduler` has none and gives builds nothing.
///
/// The runner calls `secrets(for:)` once at the start of every real build, in the fetch step,
/// from that build's task (several builds call it at once), and again for every attempt.
/// Whatever it returns reaches no log, record, task key or error of the agent's: only the
/// names go into the build's log, and every value is masked in it from then on.
public protocol BuildSecretsSource: Sendable {
    /// The secrets of `build`, which this agent holds now. Throws `SecretsUnavailable` with a
    /// message for the build's log (never a value); a cancelled caller gets `CancellationError`.
    func secrets(for build: String) async throws -> BuildSecrets
}

/// The secrets of a build could not be had: the fetch step fails with `message`.
public struct SecretsUnavailable: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The schedulers an agent asks for secrets (`kiln agent --scheduler URL[,URL…]`), checked.
public enum SchedulerURLs {
    /// Each URL `http(s)://host[:port][/path]` without a trailing slash, in the order given.
    /// The rule of etcd's endpoints: the agent's machine credential and the secrets cross the
    /// network only inside TLS, so `http://` is for a scheduler on this machine's loopback
    /// (127.0.0.0/8, `localhost`, `[::1]`) only. User information in a URL is refused (the
    /// credential is the `--registry-credentials` file), and so are a query and a fragment.
    public static func parse(_ text: String) throws -> [String] {
        let items = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !items.isEmpty else { throw KilnError.invalid("--scheduler is empty: give the scheduler's API address, such as http://127.0.0.1:7070") }
        return try items.map(check)
    }

    static func check(_ url: String) throws -> String {
        let scheme = url.hasPrefix("https://") ? "https" : url.hasPrefix("http://") ? "http" : ""
        guard !scheme.isEmpty else {
            throw KilnError.invalid("scheduler '\(Validation.printable(url))' is not an http:// or https:// URL (for example http://127.0.0.1:7070)")
        }
        var rest = Substring(url.dropFirst(scheme.count + 3))
        while rest.hasSuffix("/") { rest = rest.dropLast() }
        let authority = rest.prefix { $0 != "/" }
        guard !rest.contains("@"), !rest.contains("?"), !rest.contains("#"), !rest.contains(where: { $0 == " " || !$0.isASCII }) else {
            throw KilnError.invalid("scheduler '\(Validation.printable(url))' must be scheme://host[:port] with no user, query or fragment: the agent logs in with its --registry-credentials")
        }
        let host: Substring
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw KilnError.invalid("scheduler '\(Validation.printable(url))' has an unclosed [IPv6 address]") }
            host = authority[authority.index(after: authority.startIndex)..<close]
        } else {
            host = authority.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        }
        guard !host.isEmpty else { throw KilnError.invalid("scheduler '\(Validation.printable(url))' names no host") }
        if scheme == "http" && !HostReach.isLoopback(String(host)) {
            throw KilnError.invalid("scheduler \(url) is not on this machine's loopback: plain HTTP would carry the agent's machine credential and the builds' secrets across the network in clear. Use https://")
        }
        return "\(scheme)://\(rest)"
    }

}
