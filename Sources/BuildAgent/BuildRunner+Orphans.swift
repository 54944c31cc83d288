import Foundation
import KilnCore

extension BuildRunner {
    /// Removes every container this agent id left behind: the compile containers
    /// (`kiln.agent=<id>`) of an earlier process of this agent that was killed without
    /// cleaning up. Called from `prepare`, so before the agent registers or takes a task.
    ///
    /// Why all of them, and not only those of builds no longer assigned here: nothing
    /// survives in this new process of the runs that started them, so a build still assigned
    /// here is run again from its start (its compile container is named for the attempt and
    /// would be replaced anyway). And an orphan still writing a project's Maven cache is what
    /// this prevents: the in-process cache lock died with the old process, so the orphan must
    /// be gone before any build of this process can mount that cache. One agent per data
    /// folder (`agent.lock`) keeps every other process away from the caches.
    ///
    /// - Throws: when the containers cannot be listed or one cannot be removed: an agent that
    ///   cannot be sure its caches are free must not take builds.
    func removeOrphans() async throws {
        let agent = configuration.id
        let left: [ContainerSummary]
        do {
            left = try await docker.containers(labeled: ["kiln.agent": agent])
        } catch {
            throw KilnError.unavailable("agent \(agent): cannot list the containers an earlier run of this agent may have left (\(error)); they could still be using the Maven caches")
        }
        for container in left {
            let name = container.names.first ?? container.id
            do {
                try await docker.remove(container.id, force: true)
            } catch let error as DockerError where error.statusCode == 404 {
                continue  // gone meanwhile
            } catch {
                throw KilnError.unavailable("agent \(agent): cannot remove the container \(name) an earlier run of this agent left (\(error)); remove it by hand (podman rm -f \(name)) and start again")
            }
            logger.notice("removed a container an earlier run of this agent left", metadata: [
                "container": "\(name)", "build.id": "\(container.labels["kiln.build"] ?? "?")", "state": "\(container.state)",
            ])
        }
    }
}
