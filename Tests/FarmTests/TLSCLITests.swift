import FarmHarness
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Testing
import TLSTrust

/// `kiln scheduler --tls-cert/--tls-key` and `kiln --ca-file` as real processes: the CLI
/// reaches a scheduler serving TLS with a certificate of a private CA (`TestCA`) only when it
/// trusts that CA, and says at once what to do when it does not; bad TLS files stop the start.
@Suite("TLS from the command line (real processes)", .serialized)
struct TLSCLITests {
    /// Runs `kiln ARGS` with the admin's token and `environment` added (KILN_CA_FILE and
    /// KILN_API of this process's own environment removed). Returns its exit status, its
    /// output, and how long it took.
    static func kiln(_ farm: ProcessFarm, _ arguments: [String], environment extra: [String: String] = [:]) async throws -> (status: Int32, output: String, took: Duration) {
        var environment = ProcessInfo.processInfo.environment
        for name in ["KILN_CA_FILE", "KILN_API", "KILN_TLS_CERT", "KILN_TLS_KEY"] { environment[name] = nil }
        environment["KILN_TOKEN"] = farm.adminToken
        environment.merge(extra) { $1 }
        let (kiln, finalEnvironment) = (farm.kiln, environment)
        let start = ContinuousClock.now
        let (status, output): (Int32, String) = try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(with: Result {
                    let (status, output) = try Spawn.run(kiln, arguments, environment: finalEnvironment, replaceEnvironment: true)
                    return (status, String(decoding: output, as: UTF8.self))
                })
            }
        }
        return (status, output, ContinuousClock.now - start)
    }

    /// The arguments of a `kiln scheduler` of `farm` on `port` (etcd, its credentials, the
    /// farm's admin token and secrets key), without TLS.
    static func schedulerArguments(_ farm: ProcessFarm, id: String, listen: String, etcd: String? = nil) async throws -> [String] {
        let credentials = try await #require(farm.etcdUsers).ensure(.scheduler).path
        return ["scheduler", "--listen", listen, "--etcd", etcd ?? farm.etcdEndpoint, "--etcd-credentials", credentials, "--id", id,
                "--admin-token-file", farm.adminTokenFile, "--secrets-key-file", farm.secretsKeyFile, "--log-archive", farm.logArchive.path]
    }

    @Test func theCLIReachesASchedulerServingTLSWithTheCAFileOnlyAndSaysWhatToDoWithout() async throws {
        let farm = try await ProcessFarm("tls-cli")
        let dir = try TempDir("tls-cli-pki")
        let pki = try TestCA(dir.url)
        let port = try FreePort.next()
        let scheduler = try ManagedProcess(
            name: "sched-tls", executable: farm.kiln,
            arguments: try await Self.schedulerArguments(farm, id: "sched-tls", listen: "127.0.0.1:\(port)")
                + ["--tls-cert", pki.serverCertificate, "--tls-key", pki.serverKey, "--log-level", "info"],
            logFile: farm.dir.appendingPathComponent("logs/sched-tls.log"))
        defer { scheduler.stop() }
        let api = "https://127.0.0.1:\(port)"
        let client = OutgoingHTTP.client(.init(connect: .seconds(5), read: .seconds(10), retryConnecting: false), trusting: try TrustedCA(file: pki.ca))
        try await scheduler.waitUntilReady(timeout: 60) {
            (try? await httpRequest(.GET, "\(api)/api/v1/scheduler", headers: farm.adminHeaders, client: client))?.status == 200
        }
        let log = scheduler.logTail(lines: 40)
        #expect(log.contains("listening on https://127.0.0.1:\(port)") && log.contains("for 127.0.0.1, localhost"), "\(log)")
        #expect(!log.contains("serving plain HTTP"), "\(log)")

        var r = try await Self.kiln(farm, ["user", "me", "--api", api, "--ca-file", pki.ca])
        #expect(r.status == 0 && r.output.contains("admin (admin)"), "\(r.output)")
        r = try await Self.kiln(farm, ["user", "me", "--api", "https://localhost:\(port)"], environment: ["KILN_CA_FILE": pki.ca])
        #expect(r.status == 0 && r.output.contains("admin (admin)"), "\(r.output)")

        // Without the CA, or with one that did not sign the certificate: refused at once, saying what to pass.
        for extra in [[], ["--ca-file", pki.otherCA]] {
            r = try await Self.kiln(farm, ["user", "me", "--api", api] + extra)
            #expect(r.status != 0 && r.output.contains("is not signed by a CA this process trusts") && r.output.contains("--ca-file"), "\(r.output)")
            #expect(r.took < .seconds(20), "took \(r.took): a TLS failure must not wait for a timeout")
        }
        // A CA file that is not one, and plain HTTP off loopback: refused before any request.
        r = try await Self.kiln(farm, ["user", "me", "--api", api, "--ca-file", pki.serverKey])
        #expect(r.status != 0 && r.output.contains("--ca-file") && r.output.contains(pki.serverKey), "\(r.output)")
        r = try await Self.kiln(farm, ["user", "me", "--api", "http://0.0.0.0:\(port)"])
        #expect(r.status != 0 && r.output.contains("not on this machine's loopback") && r.output.contains("https://"), "\(r.output)")
        // `kiln login` over TLS keeps the token for the https:// URL; the next command uses it.
        let person = ["XDG_CONFIG_HOME": dir.url.appendingPathComponent("config").path, "KILN_TOKEN": ""]
        r = try await Self.kiln(farm, ["login", "--token-file", farm.adminTokenFile, "--api", api, "--ca-file", pki.ca], environment: person)
        #expect(r.status == 0 && r.output.contains("logged in to \(api) as admin"), "\(r.output)")
        r = try await Self.kiln(farm, ["user", "me", "--api", api], environment: person.merging(["KILN_CA_FILE": pki.ca]) { $1 })
        #expect(r.status == 0 && r.output.contains("admin (admin)"), "\(r.output)")
    }

    @Test func badTLSFilesStopTheStartAndPlainHTTPOffLoopbackIsWarnedAbout() async throws {
        let farm = try await ProcessFarm("tls-cli-start")
        let dir = try TempDir("tls-cli-start-pki")
        let pki = try TestCA(dir.url)
        let port = try FreePort.next()
        let base = try await Self.schedulerArguments(farm, id: "sched-bad", listen: "127.0.0.1:\(port)")
        let open = dir.url.appendingPathComponent("open.key").path
        try FileManager.default.copyItem(atPath: pki.serverKey, toPath: open)
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: open)

        var r = try await Self.kiln(farm, base + ["--tls-cert", pki.serverCertificate, "--tls-key", open])
        #expect(r.status != 0 && r.output.contains("--tls-key") && r.output.contains("chmod 600 \(open)"), "\(r.output)")
        r = try await Self.kiln(farm, base + ["--tls-cert", pki.serverCertificate])
        #expect(r.status != 0 && r.output.contains("--tls-cert and --tls-key go together"), "\(r.output)")
        r = try await Self.kiln(farm, base + ["--tls-cert", pki.serverCertificate, "--tls-key", pki.clientKey])
        #expect(r.status != 0 && r.output.contains("does not go with --tls-cert"), "\(r.output)")
        // The registry's API gets the scheduler's own tokens: never over plain HTTP off the
        // loopback, never with a password in the URL (and the refusal does not repeat it).
        r = try await Self.kiln(farm, base + ["--registry-url", "http://registry.test:5000"])
        #expect(r.status != 0 && r.output.contains("plain HTTP off this machine's loopback") && r.output.contains("https://"), "\(r.output)")
        r = try await Self.kiln(farm, base + ["--registry-url", "https://kiln:s3cret-pw@registry.test:5443"])
        #expect(r.status != 0 && r.output.contains("no user or password") && !r.output.contains("s3cret-pw"), "\(r.output)")
        // A --ca-file that holds no CA stops the scheduler and the agent at start too.
        r = try await Self.kiln(farm, base + ["--ca-file", pki.serverKey, "--registry-url", "https://127.0.0.1:1"])
        #expect(r.status != 0 && r.output.contains("--ca-file") && r.output.contains(pki.serverKey), "\(r.output)")
        let agentCredentials = dir.url.appendingPathComponent("agent-t.credentials").path
        try CredentialFile.write("agent-t:token-of-agent-t", to: agentCredentials)
        r = try await Self.kiln(farm, ["agent", "--id", "agent-t", "--etcd", farm.etcdEndpoint, "--registry-credentials", agentCredentials,
                                       "--scheduler", "https://127.0.0.1:1", "--ca-file", pki.serverKey, "--data-dir", dir.url.appendingPathComponent("agent").path])
        #expect(r.status != 0 && r.output.contains("--ca-file") && r.output.contains(pki.serverKey), "\(r.output)")
        #expect(!FreePort.isInUse(port), "a refused scheduler listened")

        // Plain HTTP on every interface: warned about before anything else. Its etcd is a port
        // nothing listens on, so it never gets as far as listening; stopped once it has warned.
        let refusing = try FreePort.refusing()
        defer { withExtendedLifetime(refusing) {} }  // held until the test ends
        let closed = refusing.port
        let plain = try ManagedProcess(
            name: "sched-plain", executable: farm.kiln,
            arguments: try await Self.schedulerArguments(farm, id: "sched-plain", listen: "0.0.0.0:\(port)", etcd: "http://127.0.0.1:\(closed)"),
            logFile: farm.dir.appendingPathComponent("logs/sched-plain.log"))
        defer { plain.stop() }
        let deadline = ContinuousClock.now + .seconds(60)
        while !plain.logTail(lines: 40).contains("serving plain HTTP on 0.0.0.0"), plain.isRunning, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
        }
        let log = plain.logTail(lines: 40)
        #expect(log.contains("serving plain HTTP on 0.0.0.0") && log.contains("agents (--scheduler) and the CLI (--api) refuse")
                && log.contains("--tls-cert and --tls-key"), "\(log)")
    }
}
