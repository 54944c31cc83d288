import ArgumentParser
import Foundation
import LocalFarm
#if canImport(Glibc)
import Glibc
#endif

/// podman's OCI runtime on a builder: confines the container's config.json, then becomes
/// runc. Started by the engine for every container operation (through the script
/// `OCIRuntimeWrapper` writes), so it does one read and at most one write, then `execv`.
/// Hidden from `--help`.
struct OCIRuntimeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: OCIRuntimeWrapper.subcommand,
        abstract: "The container engine's OCI runtime: no-new-privileges and a pids limit for every container, then runc.",
        discussion: """
        For `create` and `run` it reads the bundle's config.json (--bundle, or the current \
        folder), sets process.noNewPrivileges and lowers linux.resources.pids.limit to \
        --pids-limit (setting it where it is absent or unlimited), writes it back, then runs \
        --runtime with the same arguments. Every other call runs --runtime at once. An error \
        stops the call (the container does not start) and is written where the engine reads \
        runc's errors.

        Set up by kiln up and the tests; on a builder of your own see docs/build-sandbox.md:
          [engine]
          runtime = "/etc/kiln/oci-runtime/runc"
        with that file an executable script:
          #!/bin/sh
          exec /usr/local/bin/kiln oci-runtime --runtime /usr/sbin/runc --pids-limit 4096 -- "$@"
        """,
        shouldDisplay: false)

    @Option(name: .long, help: ArgumentHelp("The real OCI runtime (absolute path).", valueName: "path"))
    var runtime: String = "/usr/sbin/runc"

    @Option(name: .long, help: ArgumentHelp("Processes a container may hold at once: set where none or an unlimited one is asked, a higher one lowered to it.", valueName: "n"))
    var pidsLimit: Int = OCIRuntimeWrapper.defaultPidsLimit

    @Argument(parsing: .postTerminator, help: ArgumentHelp("The runtime's arguments, after --.", valueName: "runc-arguments"))
    var arguments: [String] = []

    func validate() throws {
        guard runtime.hasPrefix("/"), FileManager.default.isExecutableFile(atPath: runtime) else {
            throw ValidationError("--runtime must be the absolute path of an executable OCI runtime, such as /usr/sbin/runc; '\(runtime)' is not")
        }
        guard pidsLimit >= 1 else { throw ValidationError("--pids-limit must be at least 1 (4096 is the agent's default)") }
    }

    func run() throws {
        var invocation = OCIRuntimeInvocation()
        do {
            invocation = try OCIRuntimeInvocation.parse(arguments)
            if invocation.startsContainer { try confine(bundle: invocation.bundle ?? FileManager.default.currentDirectoryPath) }
        } catch {
            report("\(error)", invocation: invocation)
            throw ExitCode.failure
        }
        // This runs on a thread of Swift's pool, which blocks nearly every signal, and an exec
        // keeps the caller's mask: runc, and through it the container's processes, would get
        // SIGTERM, SIGINT, SIGHUP… blocked (`podman stop` then waits out its time-out). The
        // engine starts runc with none blocked.
        var none = sigset_t()
        sigemptyset(&none)
        pthread_sigmask(SIG_SETMASK, &none, nil)
        let argv = ([runtime] + arguments).map { strdup($0) } + [nil]
        execv(runtime, argv)
        report("kiln oci-runtime: cannot run \(runtime): \(String(cString: strerror(errno)))", invocation: invocation)
        throw ExitCode.failure
    }

    /// Rewrites `<bundle>/config.json` in place (through a rename, keeping its mode) when it
    /// needs a change.
    func confine(bundle: String) throws {
        let path = bundle + "/config.json"
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ValidationError("kiln oci-runtime: cannot read \(path)")
        }
        do {
            guard let confined = try OCIRuntimeConfig.confine([UInt8](data), pidsLimit: pidsLimit) else { return }
            let mode = (try? FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int) ?? 0o600
            let temporary = bundle + "/.config.json.kiln-\(getpid())"
            try Data(confined).write(to: URL(fileURLWithPath: temporary))
            chmod(temporary, mode_t(mode))
            guard rename(temporary, path) == 0 else {
                let reason = String(cString: strerror(errno))
                unlink(temporary)
                throw ValidationError("kiln oci-runtime: cannot replace \(path): \(reason)")
            }
        } catch let invalid as OCIRuntimeConfig.Invalid {
            throw ValidationError("kiln oci-runtime: \(path): \(invalid.description); the container is not started")
        }
    }

    /// On stderr, and as a JSON line in runc's `--log` file when podman reads errors there.
    func report(_ message: String, invocation: OCIRuntimeInvocation) {
        FileHandle.standardError.write(Data((message + "\n").utf8))
        guard let log = invocation.log, invocation.jsonLog,
              let line = try? JSONSerialization.data(withJSONObject: ["level": "error", "msg": message]) else { return }
        let fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        let bytes = [UInt8](line) + [10]
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }
}
