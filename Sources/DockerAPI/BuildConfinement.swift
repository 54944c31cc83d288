import Foundation

/// How the `RUN` instructions of an image build (`DockerClient.build`) are confined: their
/// network, memory, CPU, capabilities and cgroup. Nil or empty fields leave the engine's default.
///
/// What podman 4.3's Docker-compatible `POST /build` accepts (read in its
/// `pkg/api/handlers/compat/images_build.go` and checked against the running service):
/// - network: without `nsoptions` every `RUN` shares the HOST's network namespace (it reaches
///   127.0.0.1); `networkmode=bridge` alone changes nothing there (it is read as buildah's
///   network configuration policy, and "bridge" is its default). A private namespace takes
///   `nsoptions=[{"Name":"network","Host":false}]`; `networkmode=NetworkDisabled` then leaves
///   it without interfaces. dockerd reads `networkmode` (`bridge`, `none`) and ignores `nsoptions`.
/// - `memory`, `memswap`, `cpuperiod`/`cpuquota`, `dropcaps`/`addcaps` (JSON lists), `cgroupparent`.
/// - NOT accepted: a pids limit (no parameter; put the steps under a `cgroupParent` whose
///   pids.max is set instead) and `no-new-privileges` (refused with 400 "not supported").
///   Both come from the engine's OCI runtime when it is `kiln oci-runtime` (LocalFarm's
///   `OCIRuntimeWrapper`, docs/build-sandbox.md), for every container it starts.
public struct BuildConfinement: Sendable, Equatable {
    public enum Network: String, Sendable {
        /// The engine's default (podman: the host's network).
        case host
        /// A network namespace of its own on the engine's default bridge.
        case bridge
        /// A network namespace of its own with only a loopback interface.
        case none
    }

    public var network: Network
    public var memoryBytes: Int64?
    /// CPUs the steps may use (1.5 = one and a half), as a CFS quota per 100 ms period.
    public var cpus: Double?
    /// Without the `CAP_` prefix, as for containers; `ALL` for every one.
    public var capDrop: [String]
    public var capAdd: [String]
    /// A cgroup (path from the hierarchy's root, "/kiln/build-1") the steps' containers are
    /// put under; its own limits (pids.max) then bound them all together.
    public var cgroupParent: String?

    public init(network: Network = .host, memoryBytes: Int64? = nil, cpus: Double? = nil,
                capDrop: [String] = [], capAdd: [String] = [], cgroupParent: String? = nil) {
        self.network = network
        self.memoryBytes = memoryBytes
        self.cpus = cpus
        self.capDrop = capDrop
        self.capAdd = capAdd
        self.cgroupParent = cgroupParent
    }

    /// The query parameters of `POST /build` that say all of this, for podman and dockerd.
    public var queryItems: [(String, String)] {
        var items: [(String, String)] = []
        switch network {
        case .host:
            break
        case .bridge:
            items.append(("networkmode", "bridge"))
            items.append(("nsoptions", #"[{"Name":"network","Host":false,"Path":""}]"#))
        case .none:
            // podman reads "NetworkDisabled" ("none" would give it its default, the bridge);
            // dockerd does not know the word and refuses the build, which fails closed.
            items.append(("networkmode", "NetworkDisabled"))
            items.append(("nsoptions", #"[{"Name":"network","Host":false,"Path":""}]"#))
        }
        if let memoryBytes {
            items.append(("memory", String(memoryBytes)))
            items.append(("memswap", String(memoryBytes)))  // no swap beyond the memory limit
        }
        if let cpus {
            items.append(("cpuperiod", "100000"))
            items.append(("cpuquota", String(max(1000, Int64((cpus * 100_000).rounded())))))
        }
        func json(_ list: [String]) -> String {
            (try? String(decoding: JSONEncoder().encode(list), as: UTF8.self)) ?? "[]"
        }
        // buildah wants the CAP_ prefix; the container API takes names either way.
        func prefixed(_ list: [String]) -> [String] { list.map { $0 == "ALL" || $0.hasPrefix("CAP_") ? $0 : "CAP_" + $0 } }
        if !capDrop.isEmpty { items.append(("dropcaps", json(prefixed(capDrop)))) }
        if !capAdd.isEmpty { items.append(("addcaps", json(prefixed(capAdd)))) }
        if let cgroupParent { items.append(("cgroupparent", cgroupParent)) }
        return items
    }
}
