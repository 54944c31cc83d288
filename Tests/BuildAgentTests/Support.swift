import BuildAgent
import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Logging
import Testing

/// A git repository made with the git CLI (test setup only): a bare `origin.git` that the
/// mirror fetches from and a work tree `work` that commits and pushes to it.
final class GitFixture: Sendable {
    let dir: TempDir
    var origin: URL { dir.path("origin.git") }
    var work: URL { dir.path("work") }
    var originURL: String { "file://" + origin.path }

    /// git with no user or system configuration of the machine's.
    var environment: [String: String] {
        [
            "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "HOME": dir.url.path,
            "GIT_AUTHOR_NAME": "Kiln Test", "GIT_AUTHOR_EMAIL": "test@kiln.invalid",
            "GIT_COMMITTER_NAME": "Kiln Test", "GIT_COMMITTER_EMAIL": "test@kiln.invalid",
        ]
    }

    init() throws {
        dir = try TempDir("git")
        try run("git", ["init", "--quiet", "--bare", "--initial-branch=main", origin.path], environment: environment)
        try run("git", ["init", "--quiet", "--initial-branch=main", work.path], environment: environment)
        try git("remote", "add", "origin", origin.path)
    }

    @discardableResult
    func git(_ arguments: String...) throws -> String {
        try run("git", ["-C", work.path] + arguments, environment: environment)
    }

    /// Writes `files` (path → contents), commits them on the current branch, pushes, and
    /// returns the new commit's sha.
    @discardableResult
    func commit(_ files: [String: String], message: String = "change", push: Bool = true) throws -> String {
        for (path, contents) in files {
            let url = work.appendingPathComponent(path)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try contents.write(to: url, atomically: true, encoding: .utf8)
        }
        try git("add", "-A")
        try git("commit", "--quiet", "-m", message)
        if push { try git("push", "--quiet", "origin", "HEAD") }
        return try git("rev-parse", "HEAD")
    }

    func mirror(_ name: String = "project") -> GitMirror {
        GitMirror(path: dir.path("mirrors/\(name).git"), url: originURL)
    }

    /// git daemon serving this fixture's folder on a free loopback port, for `body` with the
    /// URL of `origin.git` and the server as HOST:PORT (which a fetch policy must allow);
    /// stopped by PID when `body` ends.
    func withDaemon(_ body: (_ url: String, _ server: String) async throws -> Void) async throws {
        let port = try FreePort.next()
        // git-daemon itself, not the `git` wrapper: the wrapper would stand between the PID we
        // stop and the daemon.
        let execPath = try run("git", ["--exec-path"])
        let daemon = try ManagedProcess(
            name: "git daemon", executable: "\(execPath)/git-daemon",
            arguments: ["--listen=127.0.0.1", "--port=\(port)", "--base-path=\(dir.url.path)", "--export-all", "--reuseaddr", dir.url.path],
            environment: environment, logFile: dir.path("daemon.log"))
        // SIGKILL: a child started from a concurrency thread inherits its blocked SIGTERM.
        defer { daemon.killNow() }
        try await daemon.waitUntilReady(timeout: 10) { FreePort.isInUse(port) }
        try await body("git://127.0.0.1:\(port)/origin.git", "127.0.0.1:\(port)")
    }
}

/// A fetcher that runs the `kiln` built beside this test bundle (`kiln git-fetch`), whose child
/// may fetch from `servers` (HOST:PORT) on top of the default policy, which refuses loopback,
/// where every server of these tests listens.
func childFetcher(allowing servers: [String] = []) throws -> GitFetcher {
    let kiln = try #require(KilnExecutable.besideCurrent, "no executable path")
    try #require(FileManager.default.isExecutableFile(atPath: kiln.path), "\(kiln.path) is missing: swift build --build-tests builds it")
    return GitFetcher(executable: kiln, policy: try FetchPolicy(parsing: servers, denyPrivate: false))
}

/// Runs the agent `configuration` describes (a simulated one, in these tests) until `body`
/// has run, once the agent's registration is in etcd; then stops it.
func withAgentService(_ configuration: AgentConfiguration, etcd: EtcdClient, _ body: @escaping @Sendable () async throws -> Void) async throws {
    let logger = { var l = Logger(label: "test"); l.logLevel = .critical; return l }()
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await AgentService(configuration: configuration, logger: logger).run() }
        do {
            try await waitUntil(etcd, prefix: Keys(prefix: configuration.keyPrefix).agent(configuration.id)) { !$0.isEmpty }
            try await body()
        } catch {
            group.cancelAll()
            throw error
        }
        group.cancelAll()
    }
}
