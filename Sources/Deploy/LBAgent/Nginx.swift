import Foundation
import KilnCore
import Processes
#if canImport(Glibc)
import Glibc
#endif

/// One nginx master process that an lb-agent started and stops by PID, with its checks
/// (`nginx -t`) and graceful reloads.
///
/// nginx runs as `nginx -p DIR -c DIR/nginx.conf` in the foreground (`daemon off;`), so it
/// stays this process's child. Its own messages go to `DIR/logs/error.log`; what it prints
/// before it can open that file goes to `DIR/logs/nginx.out`.
struct Nginx: Sendable {
    let executable: String
    let directory: URL
    let process: ManagedProcess

    var configFile: URL { directory.appendingPathComponent("nginx.conf") }
    var errorLog: URL { directory.appendingPathComponent("logs/error.log") }

    /// Starts nginx on `configFile` and waits until its workers run.
    static func start(executable: String, directory: URL, timeout: Duration = .seconds(10)) async throws -> Nginx {
        guard let path = ManagedProcess.which(executable) else {
            throw KilnError.unavailable("nginx is not installed ('\(executable)' is not on PATH): apt-get install nginx-light, or pass --nginx /path/to/nginx")
        }
        let conf = directory.appendingPathComponent("nginx.conf")
        let process = try ManagedProcess(
            name: "nginx", executable: path, arguments: ["-p", directory.path + "/", "-c", conf.path],
            logFile: directory.appendingPathComponent("logs/nginx.out"))
        let nginx = Nginx(executable: path, directory: directory, process: process)
        do {
            try await nginx.waitForWorkers(replacing: [], timeout: timeout)
        } catch {
            nginx.stop(grace: 1)
            throw error
        }
        return nginx
    }

    /// Runs `nginx -t` on `configFile` (a candidate main file). Returns nil when nginx accepts
    /// it, else nginx's message (its `[emerg]` lines).
    static func test(executable: String, directory: URL, configFile: URL) async throws -> String? {
        let r = try await Spawn.runDetached(executable, ["-t", "-q", "-p", directory.path + "/", "-c", configFile.path])
        if r.status == 0 { return nil }
        let output = String(decoding: r.output, as: UTF8.self)
        let lines = output.split(separator: "\n").filter { $0.contains("[emerg]") || $0.contains("[alert]") || $0.contains("[crit]") }
        let message = (lines.isEmpty ? output.split(separator: "\n").map(String.init) : lines.map(Self.withoutTimestamp)).joined(separator: "; ")
        return message.isEmpty ? "nginx -t failed with status \(r.status)" : message
    }

    /// `2026/11/25 01:45:37 [emerg] 5311#5311: "x" directive invalid` → `[emerg] "x" directive invalid`.
    private static func withoutTimestamp(_ line: Substring) -> String {
        guard let level = line.range(of: "[") else { return String(line) }
        var rest = line[level.lowerBound...]
        if let close = rest.firstIndex(of: "]"), let colon = rest[close...].range(of: ": ") {
            rest = rest[..<rest.index(after: close)] + " " + rest[colon.upperBound...]
        }
        return String(rest)
    }

    /// Reloads gracefully (SIGHUP to the master, as `nginx -s reload` does) and waits until
    /// new workers run and every old one has stopped taking connections: old workers finish
    /// their requests, so none is dropped. Throws if nginx refuses the config or has died.
    func reload(timeout: Duration = .seconds(15)) async throws {
        try checkRunning()
        let old = workers().filter { !$0.shuttingDown }.map(\.pid)
        kill(process.pid, SIGHUP)
        try await waitForWorkers(replacing: Set(old), timeout: timeout)
    }

    /// Waits until at least one worker not in `old` runs and no worker in `old` still takes
    /// connections. nginx says neither when it is done nor when it refused a config, so this
    /// looks at its children (`/proc`), every 10 ms.
    private func waitForWorkers(replacing old: Set<pid_t>, timeout: Duration) async throws {
        let clock = ContinuousClock(), deadline = clock.now + timeout
        while clock.now < deadline {
            try checkRunning()
            let now = workers()
            let serving = now.filter { !$0.shuttingDown }.map(\.pid)
            if serving.contains(where: { !old.contains($0) }) && !serving.contains(where: old.contains) { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw KilnError.unavailable("nginx (pid \(process.pid)) did not start new workers within \(timeout); \(errorLog.path) ends with:\n\(logTail())")
    }

    private func checkRunning() throws {
        if let status = process.status {
            throw KilnError.unavailable("nginx (pid \(process.pid)) exited with status \(status); \(errorLog.path) ends with:\n\(logTail())\n\(process.logTail(lines: 5))")
        }
    }

    /// Whether a process of nginx's process group (the master's id) still runs: a zombie has
    /// already closed its sockets and does not count.
    func groupHasLiveProcesses() -> Bool {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return false }
        for entry in entries where pid_t(entry) != nil {
            guard let stat = ProcFile.text("/proc/\(entry)/stat"),
                  let close = stat.lastIndex(of: ")") else { continue }
            // "pid (comm) state ppid pgrp …"
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 2, pid_t(fields[2]) == process.pid, fields[0] != "Z" { return true }
        }
        return false
    }

    /// The master's worker processes, read from `/proc`: each one's PID and whether its title
    /// says it is shutting down (it then no longer accepts connections).
    func workers() -> [(pid: pid_t, shuttingDown: Bool)] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        var found: [(pid: pid_t, shuttingDown: Bool)] = []
        for entry in entries {
            guard let pid = pid_t(entry),
                  let stat = ProcFile.text("/proc/\(entry)/stat"),
                  let close = stat.lastIndex(of: ")") else { continue }
            // "pid (comm) state ppid …": the name may hold spaces, so read after its ')'.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 1, pid_t(fields[1]) == process.pid,
                  let cmdline = ProcFile.data("/proc/\(entry)/cmdline") else { continue }
            let title = String(decoding: cmdline.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
            guard title.contains("worker process") else { continue }
            found.append((pid, title.contains("shutting down")))
        }
        return found
    }

    /// Stops nginx: SIGQUIT (graceful: requests in flight finish), then SIGKILL after `grace` seconds.
    func stop(grace: Double = 10) {
        guard process.isRunning else {
            // A master that died leaves its workers serving the old config: take them too
            // (its process group lives on as long as they do, so the id names only them), and
            // wait until they are gone, so their port is free when this returns.
            kill(-process.pid, SIGKILL)
            let deadline = Date().addingTimeInterval(5)
            while groupHasLiveProcesses() && Date() < deadline { usleep(10_000) }
            return
        }
        kill(process.pid, SIGQUIT)
        let deadline = Date().addingTimeInterval(grace)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            // nginx leads its own process group (see `Spawn`): this takes its workers too.
            kill(-process.pid, SIGKILL)
            process.killNow()
        }
    }

    func logTail(lines: Int = 10) -> String {
        guard let text = try? String(contentsOf: errorLog, encoding: .utf8) else { return "(empty)" }
        return text.split(separator: "\n").suffix(lines).joined(separator: "\n")
    }
}
