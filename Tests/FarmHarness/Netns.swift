import Foundation
import KilnCore
import LocalFarm
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Whether this machine can make the multi-host test farm (``NetnsNetwork``), computed once:
/// nil when it can, else the reason it cannot. The multi-host suite runs
/// `.enabled(if: NetnsSupport.reason == nil, NetnsSupport.skipMessage)`.
public enum NetnsSupport {
    public static let reason: String? = probe()

    /// What a skipped suite says.
    public static var skipMessage: String {
        "multi-host tests skipped: \(reason ?? "none"); they need root and network namespaces (ip netns, veth, bridge)"
    }

    /// The programs the farm runs or needs to build its hosts.
    static let programs = ["ip", "nsenter", "unshare", "tail", "etcd", "docker-registry", "podman", "runc", "buildah", "git", "openssl"]

    private static func probe() -> String? {
        guard getuid() == 0 else { return "not root (uid \(getuid()))" }
        let missing = programs.filter { ManagedProcess.which($0) == nil }
        guard missing.isEmpty else { return "\(missing.joined(separator: ", ")) not installed (scripts/install-deps.sh)" }
        let name = "kmhprobe-\(getpid())"
        defer {
            _ = try? NetnsNetwork.ip(["netns", "del", name])
        }
        do {
            try NetnsNetwork.ip(["netns", "add", name])
            // A veth made directly inside the namespace: what the farm's hosts get.
            try NetnsNetwork.ip(["link", "add", "kmhprobe\(getpid() % 10000)a", "netns", name, "type", "veth", "peer", "name", "kmhprobe\(getpid() % 10000)b", "netns", name])
        } catch {
            return "cannot make a network namespace with a veth pair (\(error)); containers without CAP_NET_ADMIN cannot"
        }
        guard NetnsNetwork.freeSubnets().first != nil else { return "no /24 in 10.217.0.0/16 is free of this machine's routes and addresses" }
        return nil
    }
}

/// A network of "hosts" on this machine, for the multi-host test farm: one network
/// namespace per host on a bridge (in a "switch" namespace of its own), a hosts file per host
/// naming every host, and the test process's own link into it (the op link). How to use and
/// debug it, and the verified facts it rests on: docs/testing-multihost.md.
///
/// Names, for run id `r` (4 hex digits): namespaces `kmh<r>-<host>`, the switch `kmh<r>-sw`,
/// interfaces `kmh<r>v<nn>` (in host nn), `kmh<r>p<nn>` (its switch port) and `kmh<r>op` (the
/// op link, the root namespace's 10.217.k.1). All under 16 characters, as Linux requires.
///
/// **Safety.** Before the op link exists a blackhole route for the run's /24 is added in the
/// root namespace (with a metric above the link's own route), so that no packet for the farm
/// can leave this machine through the default route if the link is missing or down, and every
/// address is checked with `ip route get` (``checkRoute(_:)``) before this process talks to it.
///
/// **Hosts.** Each host has a holder: `nsenter --net=… unshare --mount --uts --propagation slave`
/// running `sh`, which bind-mounts the host's `hosts` over /etc/hosts and its `etc-containers`
/// over /etc/containers, sets the host name and execs `tail --pid=<this process> -f /dev/null`
/// (so it dies with this process, even after a SIGKILL). Every process of the host is started
/// with `nsenter -t HOLDER --net --mount --uts --wd=HOSTDIR` (``launcher(_:)``), so a host's
/// processes share its mount namespace (the agent's overlays are seen by its podman) and see
/// its name. Never `ip netns exec`: it remounts /sys, and podman then finds no cgroups.
///
/// **Teardown** (``teardown()``): the caller stops its processes first; then anything left in
/// the hosts' namespaces is killed, the holders, `ip netns del` of every namespace, the op
/// link is waited for, the blackhole route and the run's folder go. ``sweep()`` does the same
/// for runs whose owner process is dead.
public final class NetnsNetwork: Sendable {
    /// One host: its namespace, its veth, its folder and its holder.
    public struct Host: Sendable {
        public let name: String
        public let address: String
        public let netns: String
        public let veth: String
        public let dir: URL
        public let holder: ManagedProcess
    }

    /// Run id: 4 hex digits.
    public let runID: String
    /// The third byte of the run's subnet 10.217.k.0/24.
    public let subnet: Int
    /// The run's folder: `owner`, `subnet`, `hosts/<host>/`.
    public let dir: URL
    /// The op link (root namespace side).
    public let opLink: String
    /// The root namespace's address on the op link (10.217.k.1).
    public var opAddress: String { "10.217.\(subnet).1" }
    public let hosts: [String: Host]
    /// The switch namespace.
    public let switchNetns: String
    private let torn = Mutex(false)

    /// The root of every run's folder.
    public static let runsRoot = URL(fileURLWithPath: "/tmp")

    /// `10.217.<subnet>.<octet>`.
    public func address(_ octet: Int) -> String { "10.217.\(subnet).\(octet)" }

    public func host(_ name: String) -> Host {
        guard let h = hosts[name] else { preconditionFailure("no host \(name) in this network") }
        return h
    }

    /// Makes the network: `layout` gives each host's name and the last byte of its address
    /// (2...254), `aliases` more names for a host's address (name → host) in every hosts file.
    public static func create(_ layout: [(name: String, octet: Int)], aliases: [String: String] = [:]) throws -> NetnsNetwork {
        sweep()
        let runID = String(format: "%04x", UInt16.random(in: 0...UInt16.max))
        let dir = runsRoot.appendingPathComponent("kmh\(runID)")
        let fm = FileManager.default
        try fm.createDirectory(at: dir.appendingPathComponent("hosts"), withIntermediateDirectories: true)
        try "\(getpid())\n".write(to: dir.appendingPathComponent("owner"), atomically: true, encoding: .utf8)

        // The blackhole route is also the run's claim on its /24: a second run fails to add the same.
        var subnet: Int?
        for k in freeSubnets().shuffled() where (try? ip(["route", "add", "blackhole", "10.217.\(k).0/24", "metric", "4242"])) != nil {
            subnet = k
            break
        }
        guard let k = subnet else { throw FarmError("no /24 in 10.217.0.0/16 is free on this machine for the multi-host farm") }
        try "\(k)\n".write(to: dir.appendingPathComponent("subnet"), atomically: true, encoding: .utf8)

        let prefix = "kmh\(runID)"
        let sw = "\(prefix)-sw"
        var made: [String: Host] = [:]
        var namespaces = [sw]
        do {
            try ip(["netns", "add", sw])
            try ip(["-n", sw, "link", "add", "\(prefix)br", "type", "bridge"])
            try ip(["-n", sw, "link", "set", "\(prefix)br", "up"])
            var hostsFile = "127.0.0.1 localhost\n"
            for (name, octet) in layout {
                hostsFile += "10.217.\(k).\(octet) \(name) \(aliases.filter { $0.value == name }.keys.sorted().joined(separator: " "))\n"
            }
            for (index, (name, octet)) in layout.enumerated() {
                let ns = "\(prefix)-\(name)"
                let nn = String(format: "%02d", index + 1)
                let veth = "\(prefix)v\(nn)", port = "\(prefix)p\(nn)"
                try ip(["netns", "add", ns])
                namespaces.append(ns)
                try ip(["link", "add", veth, "netns", ns, "type", "veth", "peer", "name", port, "netns", sw])
                try ip(["-n", sw, "link", "set", port, "master", "\(prefix)br"])
                try ip(["-n", sw, "link", "set", port, "up"])
                try ip(["-n", ns, "link", "set", "lo", "up"])
                try ip(["-n", ns, "addr", "add", "10.217.\(k).\(octet)/24", "dev", veth])
                try ip(["-n", ns, "link", "set", veth, "up"])
                let hostDir = dir.appendingPathComponent("hosts/\(name)")
                try fm.createDirectory(at: hostDir, withIntermediateDirectories: true)
                try hostsFile.write(to: hostDir.appendingPathComponent("hosts"), atomically: true, encoding: .utf8)
                let etc = hostDir.appendingPathComponent("etc-containers")
                let copy = try Spawn.run("/bin/cp", ["-a", "/etc/containers", etc.path])
                guard copy.status == 0 else { throw FarmError("cp -a /etc/containers \(etc.path): \(String(decoding: copy.output, as: UTF8.self))") }
                let holder = try startHolder(netns: ns, host: name, dir: hostDir)
                made[name] = Host(name: name, address: "10.217.\(k).\(octet)", netns: ns, veth: veth, dir: hostDir, holder: holder)
            }
            // The op link last: until it exists, the blackhole route answers for the /24.
            try ip(["link", "add", "\(prefix)op", "type", "veth", "peer", "name", "\(prefix)opp", "netns", sw])
            try ip(["-n", sw, "link", "set", "\(prefix)opp", "master", "\(prefix)br"])
            try ip(["-n", sw, "link", "set", "\(prefix)opp", "up"])
            try ip(["addr", "add", "10.217.\(k).1/24", "dev", "\(prefix)op"])
            try ip(["link", "set", "\(prefix)op", "up"])
        } catch {
            for h in made.values { h.holder.killNow() }
            cleanUp(namespaces: namespaces, opLink: "\(prefix)op", subnet: k, dir: dir)
            throw error
        }
        let network = NetnsNetwork(runID: runID, subnet: k, dir: dir, opLink: "\(prefix)op", hosts: made, switchNetns: sw)
        for h in made.values { try network.checkRoute(h.address) }
        return network
    }

    private init(runID: String, subnet: Int, dir: URL, opLink: String, hosts: [String: Host], switchNetns: String) {
        self.runID = runID
        self.subnet = subnet
        self.dir = dir
        self.opLink = opLink
        self.hosts = hosts
        self.switchNetns = switchNetns
    }

    deinit {
        teardown()
    }

    /// The holder of a host: see the type's comment.
    private static func startHolder(netns: String, host: String, dir: URL) throws -> ManagedProcess {
        let script = """
            mount --bind '\(dir.path)/hosts' /etc/hosts && mount --bind '\(dir.path)/etc-containers' /etc/containers \
            && hostname '\(host)' && exec tail --pid=\(getpid()) -f /dev/null
            """
        let holder = try ManagedProcess(
            name: "holder \(host)", executable: "/usr/bin/nsenter",
            arguments: ["--net=/run/netns/\(netns)", "--", "/usr/bin/unshare", "--mount", "--uts", "--propagation", "slave", "--", "/bin/sh", "-c", script],
            logFile: dir.appendingPathComponent("holder.log"))
        // nsenter, unshare and sh all exec: the holder is ready when its PID runs tail.
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if let status = holder.status {
                throw FarmError("the holder of host \(host) exited (\(status)): \(holder.logTail())")
            }
            if ProcFile.text("/proc/\(holder.pid)/comm")?.trimmingCharacters(in: .whitespacesAndNewlines) == "tail" { return holder }
            usleep(10_000)
        }
        holder.killNow()
        throw FarmError("the holder of host \(host) did not start within 20 s: \(holder.logTail())")
    }

    /// `nsenter -t HOLDER --net --mount --uts --wd=HOSTDIR -- env PWD=HOSTDIR`: put before a
    /// program to run it on `host`. PWD must name the working directory: Go programs trust
    /// it (buildah's copier, chrooted, fails with "getwd: no such file or directory" when it
    /// names this process's folder instead). nsenter and env exec: the PID is the program's.
    public func launcher(_ host: String) -> [String] {
        let h = self.host(host)
        return ["/usr/bin/nsenter", "-t", String(h.holder.pid), "--net", "--mount", "--uts", "--wd=\(h.dir.path)", "--", "/usr/bin/env", "PWD=\(h.dir.path)"]
    }

    /// Starts `executable` on `host` (its namespaces, in its folder), stopped by PID as any
    /// `ManagedProcess` (nsenter execs: the PID is the program's).
    public func start(on host: String, name: String, executable: String, arguments: [String], environment: [String: String]? = nil,
                      logFile: URL) throws -> ManagedProcess {
        guard let path = ManagedProcess.which(executable) else { throw FarmError("\(name): '\(executable)' is not installed") }
        let launcher = self.launcher(host)
        return try ManagedProcess(name: name, executable: launcher[0], arguments: Array(launcher.dropFirst()) + [path] + arguments,
                                  environment: environment, logFile: logFile)
    }

    /// Runs a command on `host` to its end; its status and output (stdout and stderr).
    @discardableResult
    public func run(on host: String, _ executable: String, _ arguments: [String], environment: [String: String]? = nil) throws -> (status: Int32, output: String) {
        guard let path = ManagedProcess.which(executable) else { throw FarmError("'\(executable)' is not installed") }
        let launcher = self.launcher(host)
        return try ManagedProcess.run(launcher[0], Array(launcher.dropFirst()) + [path] + arguments, environment: environment)
    }

    /// Cuts `host` off the network: its veth down (inside its namespace). Connections to it
    /// time out; it sees "network unreachable" at once.
    public func cut(_ host: String) throws {
        let h = self.host(host)
        try Self.ip(["-n", h.netns, "link", "set", h.veth, "down"])
    }

    /// Brings `host` back (its veth up): reachable again at once.
    public func heal(_ host: String) throws {
        let h = self.host(host)
        try Self.ip(["-n", h.netns, "link", "set", h.veth, "up"])
    }

    /// Throws unless the root namespace sends packets for `address` through this run's op link.
    public func checkRoute(_ address: String) throws {
        let r = try Spawn.run("/usr/sbin/ip", ["route", "get", address])
        let text = String(decoding: r.output, as: UTF8.self)
        guard r.status == 0, text.contains("dev \(opLink) ") else {
            throw FarmError("refusing to talk to \(address): the root namespace would not send it through the farm's link \(opLink) (`ip route get \(address)`: \(text))")
        }
    }

    /// Kills whatever still runs in the hosts' namespaces (the caller stopped its processes
    /// first), then the holders, deletes the namespaces, waits for the op link to go, removes
    /// the blackhole route and the run's folder. Calling it twice is harmless.
    public func teardown() {
        guard torn.withLock({ t in defer { t = true }; return !t }) else { return }
        for h in hosts.values { Self.killAll(in: h.netns) }
        for h in hosts.values { h.holder.stop(grace: 2) }
        Self.cleanUp(namespaces: hosts.values.map(\.netns) + [switchNetns], opLink: opLink, subnet: subnet, dir: dir)
    }

    // MARK: the machine's state

    /// Runs `ip` with `arguments`; throws with its output when it fails.
    @discardableResult
    static func ip(_ arguments: [String]) throws -> String {
        let r = try Spawn.run("/usr/sbin/ip", arguments)
        let text = String(decoding: r.output, as: UTF8.self)
        guard r.status == 0 else { throw FarmError("ip \(arguments.joined(separator: " ")) failed (\(r.status)): \(text)") }
        return text
    }

    /// The k in 1...254 whose 10.217.k.0/24 neither a route nor an address of the root namespace mentions.
    static func freeSubnets() -> [Int] {
        let used = ((try? ip(["-4", "route", "show", "table", "all"])) ?? "") + ((try? ip(["-4", "addr"])) ?? "")
        // 10.217/16 routed as a whole (or anything wider naming it) leaves nothing free.
        if used.contains("10.217.0.0/16") || used.contains("10.0.0.0/8") { return [] }
        return (1...254).filter { !used.contains("10.217.\($0).") }
    }

    /// SIGKILL to every process in `netns` (`ip netns pids`), waiting until none is left.
    static func killAll(in netns: String) {
        for _ in 0..<50 {
            let pids = ((try? ip(["netns", "pids", netns])) ?? "").split(separator: "\n").compactMap { Int32($0.trimmingCharacters(in: .whitespaces)) }
            if pids.isEmpty { return }
            for pid in pids { kill(pid, SIGKILL) }
            usleep(100_000)
        }
    }

    private static func cleanUp(namespaces: [String], opLink: String, subnet: Int, dir: URL) {
        for ns in namespaces {
            killAll(in: ns)
            _ = try? ip(["netns", "del", ns])
        }
        // Deleting the switch removes the op link's peer, and so the op link, but asynchronously.
        let deadline = Date().addingTimeInterval(10)
        while (try? ip(["link", "show", opLink])) != nil && Date() < deadline { usleep(20_000) }
        _ = try? ip(["link", "del", opLink])
        _ = try? ip(["route", "del", "blackhole", "10.217.\(subnet).0/24", "metric", "4242"])
        try? FileManager.default.removeItem(at: dir)
    }

    /// Removes the leftovers of runs whose owner process is dead: namespaces named `kmh<r>-*`
    /// whose run folder's `owner` names a PID that no longer runs (the processes in them are
    /// killed first), their op link, blackhole route and folder. Never touches other names,
    /// nor a run whose owner is alive or unknown.
    public static func sweep() {
        let names = ((try? ip(["netns", "list"])) ?? "").split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) }
        var byRun: [String: [String]] = [:]
        for name in names where name.hasPrefix("kmh") && !name.hasPrefix("kmhprobe") {
            let run = String(name.dropFirst(3).prefix { $0 != "-" })
            guard run.count == 4, run.allSatisfy(\.isHexDigit) else { continue }
            byRun[run, default: []].append(name)
        }
        for (run, namespaces) in byRun {
            let dir = runsRoot.appendingPathComponent("kmh\(run)")
            guard let owner = ProcFile.text(dir.appendingPathComponent("owner").path).flatMap({ Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }),
                  kill(owner, 0) != 0 && errno == ESRCH,
                  let subnet = ProcFile.text(dir.appendingPathComponent("subnet").path).flatMap({ Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
            else { continue }
            cleanUp(namespaces: namespaces.sorted { !$0.hasSuffix("-sw") && $1.hasSuffix("-sw") }, opLink: "kmh\(run)op", subnet: subnet, dir: dir)
        }
    }
}
