import Foundation
import KilnCore

/// podman's OCI runtime on a Kiln builder: `kiln oci-runtime` in front of runc, so that every
/// container the engine starts (compile containers, the Dockerfile's `RUN` steps, which
/// podman 4.3's compat `/build` cannot confine this way, app containers) gets
/// `no-new-privileges` and a pids limit (`OCIRuntimeConfig`).
///
/// podman takes a runtime as a plain path without arguments (containers.conf `[engine]
/// runtime`, which both its containers and the builds of `POST /build` use: libpod's `Build`
/// hands buildah the default runtime's path). So the wrapper is a tiny script named `runc`
/// (podman reads the runtime's features from the file's base name: JSON error output is on
/// for `runc`) that runs `kiln oci-runtime --runtime RUNC --pids-limit N -- "$@"`.
///
/// The rule a caller keeps: the script names a `kiln` binary by path; that binary must stay
/// there while the engine runs (a missing one fails every container start, never starts one
/// unconfined).
public enum OCIRuntimeWrapper {
    /// The hidden subcommand of `kiln` that is the runtime.
    public static let subcommand = "oci-runtime"

    /// The file name podman is given: its base name must be `runc` (see above).
    public static let scriptName = "runc"

    /// The processes a container may hold at once when nothing lower is asked for: the
    /// agent's default `--build-pids`.
    public static let defaultPidsLimit = BuildLimits.agentDefault.pids ?? 4096

    /// The text of the script (POSIX sh; paths single-quoted). Only a call that holds the word
    /// `create`, `run` or `restore` goes through kiln (a container start: about 30 ms of kiln's own
    /// start-up); `state`, `start`, `kill`, `delete`… go straight to the runtime. Any argument
    /// counts, not only the subcommand, so no spelling of a start can slip past kiln.
    public static func script(kiln: String, runtime: String, pidsLimit: Int) -> String {
        func quoted(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: #"'\''"#) + "'" }
        return """
            #!/bin/sh
            # Written by kiln at every start of the engine: every container start goes through
            # `kiln oci-runtime` (no-new-privileges, a pids limit) on its way to the runtime.
            for arg; do
              case "$arg" in
                create|run|restore) exec \(quoted(kiln)) \(subcommand) --runtime \(quoted(runtime)) --pids-limit \(pidsLimit) -- "$@" ;;
              esac
            done
            exec \(quoted(runtime)) "$@"

            """
    }

    /// Writes the script into `folder` (created if missing), mode 0755, replacing an older
    /// one atomically (the engine may be starting a container through it right now).
    /// Returns its path, for containers.conf.
    @discardableResult
    public static func install(in folder: URL, kiln: String, runtime: String, pidsLimit: Int) throws -> URL {
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let path = folder.appendingPathComponent(scriptName)
        // Unique: the services of one root (cells) may be started at once by one process.
        let temporary = folder.appendingPathComponent(".\(scriptName).\(UUID().uuidString)")
        try Data(script(kiln: kiln, runtime: runtime, pidsLimit: pidsLimit).utf8).write(to: temporary)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: temporary.path)
        guard rename(temporary.path, path.path) == 0 else {
            let reason = String(cString: strerror(errno))
            try? FileManager.default.removeItem(at: temporary)
            throw FarmError("cannot install the OCI runtime wrapper at \(path.path): \(reason)")
        }
        return path
    }
}

/// What one call of the runtime asks, read from runc's command line the way runc reads it
/// (Go's flag syntax: `-x` and `--x`, a value as the next argument or after `=`).
public struct OCIRuntimeInvocation: Equatable, Sendable {
    /// runc's subcommand (`create`, `start`, `state`…); nil for `--version` or `--help` alone.
    public var command: String?
    /// `--bundle` of `create` or `run`; nil: the current folder, as for runc.
    public var bundle: String?
    /// The global `--log` file and whether `--log-format` is `json` (where podman reads the
    /// runtime's error).
    public var log: String?
    public var jsonLog = false

    public init(command: String? = nil, bundle: String? = nil, log: String? = nil, jsonLog: Bool = false) {
        self.command = command
        self.bundle = bundle
        self.log = log
        self.jsonLog = jsonLog
    }

    /// Whether the bundle's config.json is read by this call (`create`, `run`, `restore`).
    public var startsContainer: Bool { command.map(OCIRuntimeInvocation.starts.contains) ?? false }

    /// runc's subcommands that start a container from a bundle's config.json.
    public static let starts: Set<String> = ["create", "run", "restore"]

    /// runc 1.1's global options that take a value, and its subcommands.
    static let globalValues: Set<String> = ["log", "log-format", "root", "criu", "rootless"]
    static let commands: Set<String> = [
        "checkpoint", "create", "delete", "events", "exec", "features", "init", "kill", "list", "pause", "ps",
        "restore", "resume", "run", "spec", "start", "state", "update", "help", "h",
    ]
    /// Options of `create`, `run` and `restore` that take a value (restore has more; a value
    /// of one of those is never a `--bundle`).
    static let startValues: Set<String> = ["bundle", "b", "console-socket", "pid-file", "preserve-fds", "image-path", "work-path", "parent-path"]

    /// Reads `arguments` (the runtime's own, without the program name).
    /// - Throws: `FarmError` for a subcommand runc does not have (an option this reader does
    ///   not know could hide `create`: refused rather than passed on unconfined).
    public static func parse(_ arguments: [String]) throws -> OCIRuntimeInvocation {
        var result = OCIRuntimeInvocation()
        var i = 0
        func option(_ arg: String) -> (name: String, value: String?)? {
            guard arg.hasPrefix("-"), arg != "-", arg != "--" else { return nil }
            let body = arg.drop { $0 == "-" }
            guard let eq = body.firstIndex(of: "=") else { return (String(body), nil) }
            return (String(body[..<eq]), String(body[body.index(after: eq)...]))
        }
        while i < arguments.count {
            let arg = arguments[i]
            if arg == "--" { i += 1; break }
            guard let (name, inline) = option(arg) else { break }
            var value = inline
            if value == nil, globalValues.contains(name), i + 1 < arguments.count {
                value = arguments[i + 1]
                i += 1
            }
            if name == "log" { result.log = value }
            if name == "log-format" { result.jsonLog = value == "json" }
            i += 1
        }
        guard i < arguments.count else { return result }
        let command = arguments[i]
        guard commands.contains(command) else {
            throw FarmError("kiln oci-runtime: '\(command)' is not a runc command (an unknown global option?); refusing rather than passing it on unchecked")
        }
        result.command = command
        guard result.startsContainer else { return result }
        // runc's CLI library (urfave/cli 1.22) moves a command's options from anywhere before
        // a `--` to the front, and the last `--bundle` wins: read them the same way.
        i += 1
        while i < arguments.count, arguments[i] != "--" {
            if let (name, inline) = option(arguments[i]) {
                var value = inline
                if value == nil, startValues.contains(name), i + 1 < arguments.count {
                    value = arguments[i + 1]
                    i += 1
                }
                if name == "bundle" || name == "b" { result.bundle = value }
            }
            i += 1
        }
        return result
    }
}
