import AsyncHTTPClient
import Foundation

/// Where one of the farm's components runs, and how this process reaches it: the default
/// (``local``) is today's one-machine farm (bind and advertise 127.0.0.1, started directly,
/// probed on loopback). The multi-host test farm (Tests/FarmHarness/NetnsFarm.swift) places
/// each component on a host of its own, a network namespace: it binds the host's address,
/// advertises the host's name to the other hosts, is started through `nsenter` into the
/// host's namespaces, and is probed by the test process through its own link into the farm.
///
/// With a placement other than ``local`` the components take fixed ports (each host has a
/// port space of its own) and skip the checks that look at this machine's sockets.
public struct Placement: Sendable {
    /// The address to listen on.
    public var bindHost: String
    /// The name (or address) the other hosts reach it at: what it advertises.
    public var advertise: String
    /// Put before the program and its arguments (for example `nsenter -t PID --net --mount --uts --wd=DIR --`); empty: started directly.
    public var launcher: [String]
    /// The address this process reaches it at for readiness checks.
    public var probeHost: String
    /// The HTTP client of the readiness checks (one that trusts the farm's CA when the component speaks TLS).
    public var probeClient: HTTPClient

    public init(bindHost: String, advertise: String, launcher: [String] = [], probeHost: String? = nil, probeClient: HTTPClient = .shared) {
        self.bindHost = bindHost
        self.advertise = advertise
        self.launcher = launcher
        self.probeHost = probeHost ?? bindHost
        self.probeClient = probeClient
    }

    /// Today's behaviour: this machine's loopback, started directly.
    public static let local = Placement(bindHost: "127.0.0.1", advertise: "127.0.0.1")

    /// Whether this is a component on this machine's own loopback and network namespace.
    public var isLocal: Bool { launcher.isEmpty && bindHost == "127.0.0.1" }

    /// The program to start and its arguments, with the launcher before them.
    func command(_ executable: String, _ arguments: [String]) throws -> (executable: String, arguments: [String]) {
        guard let first = launcher.first else { return (executable, arguments) }
        // The launcher execs the program by name: give it the full path found here.
        guard let path = ManagedProcess.which(executable) else {
            throw FarmError("the program '\(executable)' is not installed (not found on PATH)")
        }
        return (first, Array(launcher.dropFirst()) + [path] + arguments)
    }
}
