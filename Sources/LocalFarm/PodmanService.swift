import AsyncHTTPClient
import Foundation
import KilnCore
#if canImport(Glibc)
import Glibc
#endif

/// podman's Docker-compatible API service (`podman system service`) with everything of its
/// own under `root`: configuration, image storage, runtime state, the socket. The builders'
/// container engine on a one-machine farm and in the tests.
///
/// `root` is meant to be reused: a second start finds the images the first one stored. Only
/// one service may use a root at a time; a service left running by a process that died is
/// stopped (by the PID recorded in `<root>/podman.pid`) when the next one starts.
///
/// Files under `root`: `containers.conf` (runc behind `kiln oci-runtime`, the VM's rlimits,
/// cgroupfs, events to a file, podman's temporary state here instead of /run/libpod),
/// `oci-runtime/runc` (the script that is the engine's runtime: `OCIRuntimeWrapper`; every
/// container gets no-new-privileges and at most `pidsLimit` processes), `storage.conf` (overlay,
/// graphroot `storage/`, runroot `run/`), `registries.conf` (no unqualified search; plain
/// HTTP allowed for 127.0.0.1 and localhost registries), `auth.json` (empty: the service's own
/// registry credentials, none), `podman.sock`, `podman.log`.
///
/// Containers started through the service outlive it (each has its own conmon): remove them
/// before `stop()`.
public final class PodmanService: Sendable {
    public let root: URL
    /// The API socket: give it to `DockerClient(socketPath:)`.
    public let socketPath: String
    /// CONTAINERS_CONF, CONTAINERS_STORAGE_CONF and CONTAINERS_REGISTRIES_CONF for this root:
    /// a `podman` or `buildah` command run with them sees the same images.
    public let environment: [String: String]
    public let process: ManagedProcess

    /// `podman` for the first service on a root; other names for more API endpoints on the
    /// same storage (cells of the local deploy backend): socket `<root>/<name>.sock`.
    public let name: String
    /// Where the service runs: the podman and buildah commands of ``podmanCommand(_:)`` and
    /// ``ensureBusyboxImage(_:)`` run there too (its launcher), so that they share the service's
    /// mount namespace. The socket is reached by its path from anywhere.
    public let placement: Placement

    private init(root: URL, name: String, socketPath: String, environment: [String: String], process: ManagedProcess, placement: Placement) {
        self.placement = placement
        self.root = root
        self.name = name
        self.socketPath = socketPath
        self.environment = environment
        self.process = process
    }

    deinit {
        process.stop(grace: 10)
    }

    /// Writes the configuration into `root` (created if missing), starts the service and
    /// waits until `GET /_ping` answers.
    ///
    /// - Parameters:
    ///   - logFile: the service's output; by default `<root>/podman.log`.
    ///   - insecureRegistries: "127.0.0.1:PORT" addresses to mark as plain HTTP besides the
    ///     catch-all entries for 127.0.0.1 and localhost (which podman 4.3 also applies to
    ///     their ports, though its documentation says not to rely on that).
    ///   - pidsLimit: the most processes any container of this root may hold (the wrapper's
    ///     `--pids-limit`; one value per root: the last start's counts for every service on it).
    public static func start(
        root: URL, name: String = "podman", logFile: URL? = nil, insecureRegistries: [String] = [],
        pidsLimit: Int = OCIRuntimeWrapper.defaultPidsLimit, timeout: Double = 30, placement: Placement = .local
    ) async throws -> PodmanService {
        guard ManagedProcess.which("podman") != nil else {
            throw FarmError("podman is not installed: run scripts/install-deps.sh (Debian packages podman, runc)")
        }
        let root = root.standardizedFileURL
        let socket = root.appendingPathComponent("\(name).sock").path
        // sockaddr_un.sun_path holds 108 bytes with the NUL.
        guard socket.utf8.count < 108 else {
            throw FarmError("podman: the socket path \(socket) is longer than a unix socket allows (107 bytes): choose a shorter root folder")
        }
        try writeConfiguration(root: root, insecureRegistries: insecureRegistries, pidsLimit: pidsLimit)
        try stopStaleService(root: root, name: name)
        try? FileManager.default.removeItem(atPath: socket)

        let environment = self.environment(root: root)
        let command = try placement.command("podman", ["system", "service", "--time=0", "unix://\(socket)"])
        let process = try ManagedProcess(
            name: "podman service", executable: command.executable,
            arguments: command.arguments,
            environment: environment,
            // conmon leaves an empty file named "oom" in its working directory when a
            // container hits its memory limit: keep that inside the service's own folder.
            workingDirectory: root,
            logFile: logFile ?? root.appendingPathComponent("\(name).log"))
        try? "\(process.pid)\n".write(to: pidFile(root, name), atomically: true, encoding: .utf8)
        do {
            try await process.waitUntilReady(timeout: timeout) { await answers(socket: socket) }
        } catch {
            process.stop()
            throw error
        }
        return PodmanService(root: root, name: name, socketPath: socket, environment: environment, process: process, placement: placement)
    }

    /// Stops the service (SIGTERM, then SIGKILL after 10 s). Calling it twice is harmless.
    public func stop() {
        process.stop(grace: 10)
        try? FileManager.default.removeItem(atPath: socketPath)
        try? FileManager.default.removeItem(at: PodmanService.pidFile(root, name))
    }

    /// Runs the podman CLI on this root's storage and configuration (same environment as the
    /// service) and returns its exit status and combined output.
    @discardableResult
    public func podmanCommand(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let command = try placement.command("podman", arguments)
        return try ManagedProcess.run(command.executable, command.arguments, environment: environment)
    }

    /// The environment that points podman and buildah at `root`'s configuration.
    public static func environment(root: URL) -> [String: String] {
        let root = root.standardizedFileURL
        return [
            "CONTAINERS_CONF": root.appendingPathComponent("containers.conf").path,
            "CONTAINERS_STORAGE_CONF": root.appendingPathComponent("storage.conf").path,
            "CONTAINERS_REGISTRIES_CONF": root.appendingPathComponent("registries.conf").path,
            // Not root's auth.json: a person's `podman login` on this machine must not become
            // the credentials of every anonymous push or pull through this service.
            "REGISTRY_AUTH_FILE": root.appendingPathComponent("auth.json").path,
        ]
    }

    /// Writes containers.conf, storage.conf, registries.conf and the OCI runtime wrapper into
    /// `root`. The wrapper runs the `kiln` that `KilnExecutable.locate()` finds.
    public static func writeConfiguration(root: URL, insecureRegistries: [String] = [], pidsLimit: Int = OCIRuntimeWrapper.defaultPidsLimit) throws {
        let root = root.standardizedFileURL
        let fm = FileManager.default
        guard let runc = ManagedProcess.which("runc") else {
            throw FarmError("runc is not installed: run scripts/install-deps.sh (Debian package runc; crun does not work on these machines)")
        }
        guard let kiln = KilnExecutable.locate() else {
            throw FarmError("podman's runtime is `kiln oci-runtime` (no-new-privileges and a pids limit for every container), and no kiln executable was found: build it (swift build) or name it in KILN_BIN")
        }
        // podman runs `runtime` for every container, and hands the same path to buildah for
        // the RUN steps of POST /build (libpod's Build: options.Runtime = GetOCIRuntimePath()).
        let runtime = try OCIRuntimeWrapper.install(in: root.appendingPathComponent("oci-runtime"), kiln: kiln.path, runtime: runc, pidsLimit: pidsLimit)
        for sub in ["storage", "run", "tmp", "volumes"] {
            try fm.createDirectory(at: root.appendingPathComponent(sub), withIntermediateDirectories: true)
        }
        func path(_ sub: String) -> String { root.appendingPathComponent(sub).path }
        // Containers may not ask for more than the hard limits their runtime has (podman's
        // default of 1048576 open files fails with "setrlimit: Operation not permitted").
        // podman sets its own process limit to 32768 whatever the machine allows, and runc
        // inherits that: asking more fails with "error setting rlimit type 6".
        let nofile = min(hardLimit(Int32(RLIMIT_NOFILE.rawValue), fallback: 20000), 1_048_576)
        let nproc = min(hardLimit(Int32(__RLIMIT_NPROC.rawValue), fallback: 32768), 32768)
        let containers = """
            [containers]
            default_ulimits = ["nofile=\(nofile):\(nofile)", "nproc=\(nproc):\(nproc)"]

            [engine]
            runtime = "\(runtime.path)"
            cgroup_manager = "cgroupfs"
            events_logger = "file"
            events_logfile_path = "\(path("events.log"))"
            tmp_dir = "\(path("tmp"))"
            volume_path = "\(path("volumes"))"
            static_dir = "\(path("storage/libpod"))"

            """
        let storage = """
            [storage]
            driver = "overlay"
            graphroot = "\(path("storage"))"
            runroot = "\(path("run"))"

            """
        var registries = """
            unqualified-search-registries = []

            [[registry]]
            location = "127.0.0.1"
            insecure = true

            [[registry]]
            location = "localhost"
            insecure = true

            """
        for address in insecureRegistries {
            registries += """

                [[registry]]
                location = "\(address)"
                insecure = true

                """
        }
        try containers.write(to: root.appendingPathComponent("containers.conf"), atomically: true, encoding: .utf8)
        try storage.write(to: root.appendingPathComponent("storage.conf"), atomically: true, encoding: .utf8)
        try registries.write(to: root.appendingPathComponent("registries.conf"), atomically: true, encoding: .utf8)
        // REGISTRY_AUTH_FILE must exist: `podman run` refuses a missing one. Empty: this
        // service holds no registry credentials of its own; callers send theirs per request.
        let auth = path("auth.json")
        if !fm.fileExists(atPath: auth) {
            guard fm.createFile(atPath: auth, contents: Data(#"{"auths":{}}"#.utf8), attributes: [.posixPermissions: 0o600]) else {
                throw FarmError("cannot create \(auth)")
            }
        }
    }

    /// Deletes `root` and everything in it. The overlay driver leaves mounts under
    /// `<root>/storage` (a bind mount on `storage/overlay`, and one per mounted layer) that
    /// survive the service: they are unmounted first, deepest first, else the delete fails
    /// with "Device or resource busy". Stop the service (and remove its containers) first.
    ///
    /// A stopped service can leave podman processes behind that still use the root: conmon
    /// runs `podman container cleanup --root <root>/storage …` when a container exits, late
    /// under load, and that command mounts `storage/overlay` again as it starts. So every
    /// process whose command line or environment names the root is killed first, and the
    /// unmount-and-delete is tried again for a few seconds when something mounted anew.
    public static func removeStorage(root: URL) throws {
        let root = root.standardizedFileURL.path
        let deadline = Date().addingTimeInterval(10)
        while true {
            guard FileManager.default.fileExists(atPath: root) else { return }
            killProcesses(using: root)
            try unmountAll(under: root)
            do {
                try FileManager.default.removeItem(atPath: root)
                return
            } catch {
                // FileManager gives up on some of overlay's leftovers (seen under load: error
                // 512 with no reason); rm copes, and says why when it cannot.
                let rm = try? Spawn.run("/bin/rm", ["-rf", "--one-file-system", root])
                guard FileManager.default.fileExists(atPath: root) else { return }
                if Date() >= deadline {
                    let held = mountPoints(under: root)
                    throw FarmError(
                        "podman: cannot delete \(root): \(error.localizedDescription) \(rm.map { String(decoding: $0.output, as: UTF8.self) } ?? "")"
                            + (held.isEmpty ? "" : " (still mounted: \(held.joined(separator: ", ")))"))
                }
                usleep(200_000)
            }
        }
    }

    /// Unmounts every mount point at or under `root` until none is left: with several podman
    /// services on one machine a mount point can carry stacked (propagated) mounts, each
    /// needing its own umount.
    private static func unmountAll(under root: String) throws {
        for _ in 0..<16 {
            let mounts = mountPoints(under: root).sorted { $0.count > $1.count }
            if mounts.isEmpty { return }
            for mount in mounts where umount2(mount, Int32(MNT_DETACH)) != 0 && errno != EINVAL && errno != ENOENT {
                throw FarmError("podman: cannot unmount \(mount): \(String(cString: strerror(errno)))")
            }
        }
    }

    /// Kills (SIGKILL) every process other than this one whose command line or environment
    /// names `root` (conmon, `podman container cleanup`, a podman CLI), and waits up to 5 s
    /// for them to go.
    private static func killProcesses(using root: String) {
        let me = getpid()
        let needle = Data(root.utf8)
        let pids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap(Int32.init).filter { pid in
            guard pid != me, pid > 1 else { return false }
            for file in ["cmdline", "environ"] {
                guard let data = ProcFile.data("/proc/\(pid)/\(file)") else { continue }
                // An argument or variable equal to the root, or naming a path inside it.
                for field in data.split(separator: 0) where field.range(of: needle) != nil {
                    let text = String(decoding: field, as: UTF8.self)
                    if text.hasSuffix(root) || text.contains(root + "/") { return true }
                }
            }
            return false
        }
        guard !pids.isEmpty else { return }
        for pid in pids { kill(pid, SIGKILL) }
        let deadline = Date().addingTimeInterval(5)
        while pids.contains(where: { kill($0, 0) == 0 && !isZombie($0) }) && Date() < deadline { usleep(20_000) }
    }

    private static func isZombie(_ pid: Int32) -> Bool {
        guard let stat = ProcFile.text("/proc/\(pid)/stat"),
              let close = stat.lastIndex(of: ")")
        else { return true }
        return stat[stat.index(after: close)...].split(separator: " ").first == "Z"
    }

    /// Makes `name` (by default localhost/kiln/busybox:1) if the storage does not have it: a
    /// scratch image holding a static busybox with its applets linked in /bin, built with
    /// buildah in about a second. No image can be pulled on these machines, so this is the
    /// base image of the tests and the demo.
    public func ensureBusyboxImage(_ name: String = "localhost/kiln/busybox:1") throws {
        try Self.ensureBusyboxImage(name, root: root, placement: placement)
    }

    /// The same for the storage at `root`, with no service needed (`kiln up`'s, say).
    public static func ensureBusyboxImage(_ name: String = "localhost/kiln/busybox:1", root: URL, placement: Placement = .local) throws {
        let environment = environment(root: root)
        func podman(_ arguments: [String]) throws -> Int32 {
            let command = try placement.command("podman", arguments)
            return try ManagedProcess.run(command.executable, command.arguments, environment: environment).status
        }
        if try podman(["image", "exists", name]) == 0 { return }
        guard ManagedProcess.which("buildah") != nil else {
            throw FarmError("buildah is not installed: run scripts/install-deps.sh (Debian package buildah)")
        }
        guard let busybox = ["/bin/busybox", "/usr/bin/busybox"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }),
              isStatic(busybox)
        else {
            throw FarmError("a static busybox is needed to make \(name): apt-get install busybox-static")
        }
        func buildah(_ arguments: [String]) throws -> String {
            let command = try placement.command("buildah", arguments)
            let (status, output) = try ManagedProcess.run(command.executable, command.arguments, environment: environment)
            guard status == 0 else {
                throw FarmError("buildah \(arguments.joined(separator: " ")) failed (\(status)): \(output)")
            }
            return output.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let container = try buildah(["from", "scratch"]).split(separator: "\n").last.map(String.init) ?? ""
        defer { _ = try? buildah(["rm", container]) }
        _ = try buildah(["copy", container, busybox, "/bin/busybox"])
        _ = try buildah(["run", container, "/bin/busybox", "--install", "-s", "/bin"])
        _ = try buildah([
            "config", "--cmd", "/bin/sh",
            "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", container,
        ])
        _ = try buildah(["commit", "--quiet", container, name])
    }

    // MARK: internals

    private static func pidFile(_ root: URL, _ name: String) -> URL { root.appendingPathComponent("\(name).pid") }

    /// Stops a service a dead process left on `root`, identified by its recorded PID and its
    /// command line; refuses when this very process runs it (share that one instead).
    private static func stopStaleService(root: URL, name: String) throws {
        guard let text = try? String(contentsOf: pidFile(root, name), encoding: .utf8),
              let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0
        else { return }
        let socket = root.appendingPathComponent("\(name).sock").path
        guard let cmdline = ProcFile.data("/proc/\(pid)/cmdline") else { return }
        let arguments = cmdline.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        guard arguments.contains(where: { $0.hasSuffix("podman") }), arguments.contains("service"),
              arguments.contains("unix://\(socket)")
        else { return }
        if parentPID(of: pid) == getpid() {
            throw FarmError("podman: this process already runs a service on \(root.path) (pid \(pid)): share it, or use another root")
        }
        kill(pid, SIGTERM)
        let deadline = Date().addingTimeInterval(10)
        while kill(pid, 0) == 0 && Date() < deadline { usleep(50_000) }
        if kill(pid, 0) == 0 { kill(pid, SIGKILL) }
    }

    private static func parentPID(of pid: Int32) -> Int32? {
        guard let stat = ProcFile.text("/proc/\(pid)/stat"),
              let close = stat.lastIndex(of: ")")
        else { return nil }
        // after "pid (comm) ": state ppid …
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 1 ? Int32(fields[1]) : nil
    }

    private static func hardLimit(_ resource: Int32, fallback: UInt64) -> UInt64 {
        var limit = rlimit()
        guard getrlimit(resource, &limit) == 0 else { return fallback }
        return limit.rlim_max == rlim_t.max ? 1_048_576 : UInt64(limit.rlim_max)
    }

    /// Mount points at or under `root`.
    private static func mountPoints(under root: String) -> [String] { ProcFile.mountPoints(under: root) }

    /// A dynamically linked busybox names its loader ("ld-linux") near the start of the file.
    private static func isStatic(_ path: String) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? handle.close() }
        let head = handle.readData(ofLength: 8192)
        return head.range(of: Data("ld-linux".utf8)) == nil && head.range(of: Data("ld-musl".utf8)) == nil
    }

    private static func answers(socket: String) async -> Bool {
        guard let url = URL(httpURLWithSocketPath: socket, uri: "/_ping") else { return false }
        var request = HTTPClientRequest(url: url.absoluteString)
        // AHC would send the socket path as Host; Go's server (podman) refuses a '/' there.
        request.headers.add(name: "Host", value: "localhost")
        guard let response = try? await HTTPClient.shared.execute(request, timeout: .seconds(2)) else { return false }
        _ = try? await response.body.collect(upTo: 1 << 10)
        return response.status.code == 200
    }
}
