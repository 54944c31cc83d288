import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Debian's Chromium, headless, as a child process started with `Spawn` and stopped by PID.
public enum Chromium {
    public static let executable = "/usr/bin/chromium"
    public static let flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage", "--hide-scrollbars"]

    /// The binary, or an error saying how to install it: the console's tests never skip.
    public static func path() throws -> String {
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            throw FarmError("Chromium is not installed (\(executable) is missing): run scripts/install-deps.sh as root, which installs Debian's chromium")
        }
        return executable
    }

    /// The DOM after the page's scripts ran for `budgetMs` of virtual time.
    public static func dumpDOM(_ chromium: String, _ url: String, budgetMs: Int = 3000) async throws -> String {
        try await run(chromium, ["--dump-dom", "--virtual-time-budget=\(budgetMs)", url])
    }

    /// Runs Chromium to its end with a fresh profile and returns its standard output; stops it
    /// (by PID) and fails if it takes more than `timeout` seconds.
    public static func run(_ chromium: String, _ arguments: [String], timeout: Double = 60) async throws -> String {
        let profile = try TempDir("chromium")
        let out = profile.path("stdout"), err = profile.path("stderr")
        let outFD = open(out.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        let errFD = open(err.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        let pid: pid_t
        do {
            defer { close(outFD); close(errFD); close(null) }
            pid = try Spawn.start(chromium, flags + ["--user-data-dir=\(profile.path("profile").path)"] + arguments, stdin: null, stdout: outFD, stderr: errFD)
        }
        // Waiting for a child to exit has no event to wait on here: check every 50 ms.
        let deadline = Date().addingTimeInterval(timeout)
        var status = Spawn.poll(pid)
        while status == nil && Date() < deadline {
            try await Task.sleep(for: .milliseconds(50))
            status = Spawn.poll(pid)
        }
        guard let status else {
            kill(pid, SIGKILL)
            _ = Spawn.wait(pid)
            throw FarmError("chromium \(arguments.joined(separator: " ")) did not finish within \(Int(timeout)) s")
        }
        guard status == 0 else {
            throw FarmError("chromium \(arguments.joined(separator: " ")) exited with \(status): \((try? String(contentsOf: err, encoding: .utf8)) ?? "")")
        }
        return try String(contentsOf: out, encoding: .utf8)
    }
}

public struct DevToolsError: Error, CustomStringConvertible {
    public let description: String
}

/// Headless Chromium driven over its DevTools protocol on a pipe (`--remote-debugging-pipe`):
/// it reads commands on its descriptor 3 and writes answers and events on 4, each one JSON
/// text ending in a NUL byte. One command at a time; each blocks a thread of its own, not
/// one of Swift's concurrency threads. Events (`Page.loadEventFired`) read meanwhile are kept
/// for ``waitForEvent(_:timeout:)``. The profile (its cookies: a console session) lasts as
/// long as the browser.
public final class Browser: Sendable {
    let pid: pid_t
    let profile: TempDir
    private let toBrowser: Int32
    private let fromBrowser: Int32
    /// The next command id, what was read past the last answer, and the events read but not
    /// yet waited for; held for a whole command.
    private let state = Mutex<(nextID: Int, pending: [UInt8], events: [Data])>((1, [], []))
    private let closed = Atomic<Bool>(false)

    private init(pid: pid_t, profile: TempDir, toBrowser: Int32, fromBrowser: Int32) {
        self.pid = pid
        self.profile = profile
        self.toBrowser = toBrowser
        self.fromBrowser = fromBrowser
    }

    public static func launch(_ chromium: String) throws -> Browser {
        let profile = try TempDir("chromium")
        var commands: [Int32] = [0, 0], answers: [Int32] = [0, 0]
        guard pipe(&commands) == 0, pipe(&answers) == 0 else { throw FarmError("pipe() failed: errno \(errno)") }
        // Only Chromium gets them, as its 3 and 4 (Spawn moves them there).
        for fd in commands + answers { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let log = open(profile.path("chromium.log").path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { Glibc.close(log); Glibc.close(null); Glibc.close(commands[0]); Glibc.close(answers[1]) }
        let pid: pid_t
        do {
            pid = try Spawn.start(
                chromium, Chromium.flags + ["--user-data-dir=\(profile.path("profile").path)", "--remote-debugging-pipe", "--window-size=1280,900", "about:blank"],
                stdin: null, stdout: log, stderr: log, extraDescriptors: [commands[0], answers[1]])
        } catch {
            Glibc.close(commands[1]); Glibc.close(answers[0])
            throw error
        }
        return Browser(pid: pid, profile: profile, toBrowser: commands[1], fromBrowser: answers[0])
    }

    /// Sends one command and returns its answer's `result` as JSON text.
    public func call(_ method: String, _ params: [String: any Sendable] = [:], session: String? = nil, timeout: Double = 30) async throws -> Data {
        var message: [String: Any] = ["method": method, "params": params]
        if let session { message["sessionId"] = session }
        let body = try JSONSerialization.data(withJSONObject: message)
        return try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(with: Result { try self.exchange(body, timeout: timeout, method: method) })
            }
        }
    }

    private func exchange(_ body: Data, timeout: Double, method: String) throws -> Data {
        try state.withLock { state in
            let id = state.nextID
            state.nextID += 1
            // Splice the id in front of the message's other fields.
            var bytes = Array("{\"id\":\(id),".utf8) + Array(body.dropFirst()) + [0]
            var written = 0
            while written < bytes.count {
                let n = bytes.withUnsafeMutableBytes { write(toBrowser, $0.baseAddress! + written, $0.count - written) }
                if n < 0 { if errno == EINTR { continue }; throw DevToolsError(description: "\(method): write to chromium failed: errno \(errno)") }
                written += n
            }
            let deadline = Date().addingTimeInterval(timeout)
            while true {
                while let end = state.pending.firstIndex(of: 0) {
                    let text = Data(state.pending[..<end])
                    state.pending.removeSubrange(...end)
                    guard let answer = try? JSONSerialization.jsonObject(with: text) as? [String: Any] else { continue }
                    guard answer["id"] as? Int == id else {
                        if answer["method"] != nil { Self.keep(text, in: &state.events) }
                        continue
                    }
                    if let error = answer["error"] { throw DevToolsError(description: "\(method): \(error)") }
                    return try JSONSerialization.data(withJSONObject: answer["result"] ?? [:])
                }
                try readMore(into: &state.pending, until: deadline, waitingFor: method)
            }
        }
    }

    /// Reads what Chromium has written within a second (or until `deadline`).
    private func readMore(into pending: inout [UInt8], until deadline: Date, waitingFor what: String) throws {
        let left = deadline.timeIntervalSinceNow
        guard left > 0 else { throw DevToolsError(description: "\(what): nothing from chromium in time") }
        var pfd = pollfd(fd: fromBrowser, events: Int16(POLLIN), revents: 0)
        if poll(&pfd, 1, Int32(min(left, 1) * 1000)) <= 0 { return }
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        let n = read(fromBrowser, &buffer, buffer.count)
        if n == 0 { throw DevToolsError(description: "\(what): chromium closed its pipe (log: \(profile.path("chromium.log").path))") }
        if n > 0 { pending += buffer[..<n] }
    }

    private static func keep(_ event: Data, in events: inout [Data]) {
        events.append(event)
        if events.count > 1000 { events.removeFirst(events.count - 1000) }
    }

    private static func method(of event: Data) -> String? {
        (try? JSONSerialization.jsonObject(with: event) as? [String: Any])?["method"] as? String
    }

    /// Forgets the events read so far: the next ``waitForEvent(_:timeout:)`` waits for a new one.
    public func clearEvents() {
        state.withLock { $0.events.removeAll() }
    }

    /// Waits for the next event called `name` (one read since the last ``clearEvents()``
    /// counts) and returns it as JSON text.
    public func waitForEvent(_ name: String, timeout: Double = 30) async throws -> Data {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(with: Result {
                    try self.state.withLock { state in
                        let deadline = Date().addingTimeInterval(timeout)
                        while true {
                            while let end = state.pending.firstIndex(of: 0) {
                                let text = Data(state.pending[..<end])
                                state.pending.removeSubrange(...end)
                                if Self.method(of: text) != nil { Self.keep(text, in: &state.events) }
                            }
                            if let i = state.events.firstIndex(where: { Self.method(of: $0) == name }) {
                                let event = state.events[i]
                                state.events.removeFirst(i + 1)
                                return event
                            }
                            try self.readMore(into: &state.pending, until: deadline, waitingFor: name)
                        }
                    }
                })
            }
        }
    }

    /// Attaches to the page Chromium opened and returns the session to send page commands on.
    public func attachToPage() async throws -> String {
        let targets = try JSONSerialization.jsonObject(with: try await call("Target.getTargets")) as? [String: Any]
        let infos = targets?["targetInfos"] as? [[String: Any]] ?? []
        guard let page = infos.first(where: { $0["type"] as? String == "page" })?["targetId"] as? String else {
            throw DevToolsError(description: "chromium has no page open: \(infos)")
        }
        let attached = try JSONSerialization.jsonObject(with: try await call("Target.attachToTarget", ["targetId": page, "flatten": true])) as? [String: Any]
        guard let session = attached?["sessionId"] as? String else { throw DevToolsError(description: "no session from Target.attachToTarget") }
        // Page events (loadEventFired) from here on.
        _ = try await call("Page.enable", session: session)
        return session
    }

    /// Evaluates a JavaScript expression in the page, waiting for it if it is a promise;
    /// returns its value as a string.
    public func evaluate(_ expression: String, session: String, timeout: Double = 30) async throws -> String {
        let answer = try JSONSerialization.jsonObject(with: try await call(
            "Runtime.evaluate", ["expression": expression, "awaitPromise": true, "returnByValue": true], session: session, timeout: timeout)) as? [String: Any]
        if let exception = answer?["exceptionDetails"] { throw DevToolsError(description: "\(expression): \(exception)") }
        let result = answer?["result"] as? [String: Any]
        return result?["value"].map { "\($0)" } ?? "undefined"
    }

    /// The text of the page's `#log` once it contains `text` (a MutationObserver in the page
    /// tells when; no polling), waiting at most `timeout` seconds.
    public func waitForLog(containing text: String, session: String, timeout: Double = 30) async throws -> String {
        let quoted = String(decoding: try JSONSerialization.data(withJSONObject: [text]), as: UTF8.self).dropFirst().dropLast()
        return try await evaluate("""
            new Promise(function(resolve) {
              function check() {
                var l = document.getElementById('log');
                if (l && l.textContent.indexOf(\(quoted)) >= 0) { resolve(l.textContent); return true; }
              }
              if (!check()) new MutationObserver(check).observe(document, {subtree: true, childList: true, characterData: true});
            })
            """, session: session, timeout: timeout)
    }

    /// Loads `url` in the page; returns once the new document has been committed.
    public func navigate(_ url: String, session: String) async throws {
        _ = try await call("Page.navigate", ["url": url], session: session)
    }

    /// Loads `url` and waits for the page's load event (after any redirects); returns where
    /// the browser ended up.
    @discardableResult
    public func load(_ url: String, session: String) async throws -> String {
        clearEvents()
        try await navigate(url, session: session)
        _ = try await waitForEvent("Page.loadEventFired")
        return try await evaluate("location.href", session: session)
    }

    /// The page's markup now.
    public func html(session: String) async throws -> String {
        try await evaluate("document.documentElement.outerHTML", session: session)
    }

    /// Fills the fields of the form `selector` (by name), submits it as a person would (its
    /// submit button), waits for the page that answers and returns where the browser ended up.
    @discardableResult
    public func submit(_ selector: String, fields: [String: String] = [:], session: String) async throws -> String {
        let quoted = { (s: String) in String(decoding: try JSONSerialization.data(withJSONObject: [s]), as: UTF8.self).dropFirst().dropLast() }
        var script = "var f = document.querySelector(\(try quoted(selector)));"
        for (name, value) in fields.sorted(by: { $0.key < $1.key }) { script += " f.elements[\(try quoted(name))].value = \(try quoted(value));" }
        script += " f.querySelector('button[type=submit]').click(); 'submitted'"
        clearEvents()
        _ = try await evaluate(script, session: session)
        _ = try await waitForEvent("Page.loadEventFired")
        return try await evaluate("location.href", session: session)
    }

    /// Logs in to the console at `api` through its login form, starting from `path` (which
    /// redirects to the login page and, once logged in, back); returns where it ended up.
    @discardableResult
    public func logIn(_ api: String, user: String, password: String, from path: String = "/", session: String) async throws -> String {
        let login = try await load(api + path, session: session)
        guard login.hasPrefix(api + "/ui/login") else { throw DevToolsError(description: "\(path) did not lead to the login page but to \(login)") }
        return try await submit("#login", fields: ["user": user, "password": password], session: session)
    }

    public func screenshot(to file: URL, session: String) async throws {
        let answer = try JSONSerialization.jsonObject(with: try await call("Page.captureScreenshot", ["format": "png"], session: session)) as? [String: Any]
        guard let base64 = answer?["data"] as? String, let png = Data(base64Encoded: base64) else { throw DevToolsError(description: "no image from Page.captureScreenshot") }
        try png.write(to: file)
    }

    /// Asks Chromium to close (`Browser.close`, so it stops its own helper processes), then
    /// stops it by its PID if it has not ended within 5 s (SIGTERM, then SIGKILL after 5 s
    /// more), and closes the pipes. A second call does nothing.
    public func close() {
        guard !closed.exchange(true, ordering: .relaxed) else { return }
        defer { Glibc.close(toBrowser); Glibc.close(fromBrowser) }
        let message = Array(#"{"id":0,"method":"Browser.close"}"#.utf8) + [0]
        _ = message.withUnsafeBytes { write(toBrowser, $0.baseAddress!, $0.count) }
        for signal in [0, SIGTERM, SIGKILL] {
            if signal != 0 { kill(pid, signal) }
            let deadline = Date().addingTimeInterval(5)
            while Date() < deadline {
                if Spawn.poll(pid) != nil { return }
                usleep(20_000)
            }
        }
    }

    deinit { close() }
}
