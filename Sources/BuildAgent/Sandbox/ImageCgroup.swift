import Foundation

/// A pids limit for the image step's `RUN` steps, which podman's compat `/build` cannot set.
///
/// The agent makes a cgroup `/kiln-{agent}-{build}-{attempt}` in the pids hierarchy (cgroup
/// v1, what podman with `cgroup_manager = "cgroupfs"` uses on these machines) with `pids.max`,
/// and hands `/kiln-…/steps` to the build as `cgroupparent`. Each `RUN` container is made at
/// that path and the path is removed when the step ends (so the limit cannot sit on it: a
/// second `RUN` would find it gone); the kernel counts every process below the parent against
/// the parent's `pids.max`. Verified on podman 4.3.1 here: a loop of 200 background `sleep`s
/// in a `RUN` under a parent with pids.max 64 fails with "can't fork"; a second RUN too.
///
/// Not made (said in the build's log) when the pids hierarchy is not cgroup v1 at
/// `/sys/fs/cgroup/pids`, or the agent may not write it. Each `RUN` container then has only
/// the limit the engine's runtime gives it, if it is `kiln oci-runtime` (docs/build-sandbox.md):
/// one per container rather than one over all of a build's steps.
struct ImageCgroup: Sendable {
    let name: String
    static let root = "/sys/fs/cgroup"

    /// The `cgroupparent` of the build.
    var parent: String { "/\(name)/steps" }

    /// Makes the cgroup with its limit; nil when this machine does not allow it.
    static func make(name: String, pids: Int) -> ImageCgroup? {
        let hierarchy = root + "/pids"
        guard FileManager.default.fileExists(atPath: hierarchy + "/cgroup.procs"),
              !FileManager.default.fileExists(atPath: root + "/cgroup.controllers") else { return nil }
        let dir = hierarchy + "/" + name
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try "\(pids)\n".write(toFile: dir + "/pids.max", atomically: false, encoding: .utf8)
        } catch {
            rmdir(dir)
            return nil
        }
        return ImageCgroup(name: name)
    }

    /// Removes the cgroup from every hierarchy runc made it in (a cgroup folder can only be
    /// removed empty, innermost first; files in it are the kernel's and go with it).
    func remove() {
        guard let hierarchies = try? FileManager.default.contentsOfDirectory(atPath: ImageCgroup.root) else { return }
        for h in hierarchies {
            let top = "\(ImageCgroup.root)/\(h)/\(name)"
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: top, isDirectory: &isDir), isDir.boolValue else { continue }
            rmdir(top + "/steps")
            rmdir(top)
        }
    }
}
