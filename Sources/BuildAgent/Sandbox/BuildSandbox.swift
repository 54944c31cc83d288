import DockerAPI
import Foundation
import KilnCore
#if canImport(Glibc)
import Glibc
#endif

/// The confinement every build container gets: the same network, limits and capabilities for
/// the compile container and the image step's `RUN` instructions, so a step cannot do in one
/// what the other forbids.
///
/// Rules, in the order they are applied:
/// 1. Network: the agent's `compileNetwork` (bridge by default); never the host's loopback.
/// 2. Limits: the agent's, lowered by the project's (`BuildLimits.capped(by:)`).
/// 3. Capabilities: all dropped, then `capabilities` given back: what package managers and
///    build tools use (chown, setuid for `su`/`apt`'s sandbox user, kill of their children,
///    binding low ports in tests); no CAP_NET_RAW, CAP_SYS_CHROOT, CAP_MKNOD, CAP_AUDIT_WRITE.
/// 4. `no-new-privileges` for compile containers (a setuid binary gains nothing). podman's
///    compat `/build` refuses this option: `RUN` steps get it (and a pids limit) from the
///    engine's runtime, `kiln oci-runtime` (docs/build-sandbox.md), which `kiln up` and the
///    tests configure and an operator sets up on a builder of their own.
struct BuildSandbox: Sendable, Equatable {
    static let capabilities = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETUID", "SETGID", "KILL", "NET_BIND_SERVICE"]

    let network: CompileNetwork
    let limits: BuildLimits

    init(network: CompileNetwork, agentLimits: BuildLimits, project: Project) {
        self.network = network
        self.limits = (project.limits ?? BuildLimits()).capped(by: agentLimits)
    }

    /// `spec` with the sandbox's network, limits, capabilities and security options.
    func confine(_ spec: ContainerSpec) -> ContainerSpec {
        var spec = spec
        spec.networkMode = network.rawValue
        spec.memoryBytes = limits.memoryBytes
        spec.cpus = limits.cpus
        spec.pidsLimit = limits.pids
        spec.capDrop = ["ALL"]
        spec.capAdd = BuildSandbox.capabilities
        spec.securityOptions = ["no-new-privileges"]
        return spec
    }

    /// The same for the image step (no pids limit through the API: see `BuildConfinement`;
    /// `cgroupParent` carries one when the agent could make it).
    func imageConfinement(cgroupParent: String?) -> BuildConfinement {
        let net: BuildConfinement.Network = switch network {
        case .host: .host
        case .bridge: .bridge
        case .none: .none
        }
        return BuildConfinement(network: net, memoryBytes: limits.memoryBytes, cpus: limits.cpus,
                                capDrop: ["ALL"], capAdd: BuildSandbox.capabilities, cgroupParent: cgroupParent)
    }
}

/// Where a project's path lies once every symbolic link in it is followed.
enum Containment {
    /// `relative` (a project's context or Dockerfile) resolved through every link, which must
    /// lead to something inside `checkout` (itself resolved). A compile step can plant any
    /// link in the workspace (`ln -s /var/lib/kiln /workspace/c`), so the text of the path
    /// proves nothing.
    ///
    /// - Throws: `StepFailure` of `step` naming `what` when the path does not exist or leads out.
    static func resolve(_ relative: String, in checkout: URL, what: String, step: StepName) throws -> URL {
        guard let root = realPath(checkout.path) else {
            throw StepFailure(step: step, message: "the checkout \(checkout.path) is missing")
        }
        let joined = relative == "." ? checkout.path : checkout.appendingPathComponent(relative).path
        guard let real = realPath(joined) else {
            throw StepFailure(step: step, message: "the \(what) '\(relative)' is not in the repository at this commit")
        }
        guard isInside(real, root) else {
            throw StepFailure(step: step, message: "the \(what) '\(relative)' leads out of the checkout through a symbolic link (to \(real)): a build may only use its own files; make it a folder or file of the repository")
        }
        return URL(fileURLWithPath: real)
    }

    /// Whether `path` is `folder` or inside it; both absolute and free of links and `..`.
    static func isInside(_ path: String, _ folder: String) -> Bool {
        if folder == "/" { return true }
        let f = folder.hasSuffix("/") ? String(folder.dropLast()) : folder
        return path == f || path.hasPrefix(f + "/")
    }

    /// realpath(3): nil when the path or a link on its way does not exist.
    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
