import DockerAPI
import Foundation
import KilnCore
import Plugins

/// The backends by name (`local`, `kubernetes`) and what the deploy plugins share.
public struct DeployEnvironment: Sendable {
    public let store: AppStore
    public let deployers: [String: any Deployer]
    /// How long `lb` and `retire` wait for every lb-agent of a group to apply a change.
    public var lbTimeout: Duration = .seconds(60)
    /// Between two rounds of health checks while a version starts.
    public var healthInterval: Duration = .milliseconds(200)
    /// The registry agents push to (`host:port`): a build record whose image is elsewhere is
    /// not deployed (`Build.deployableImage`). Nil checks the repository's name only.
    public var registry: String?
    /// The URLs the notify plugin may call (`kiln scheduler --notify-allow`); none by default.
    public var notifyAllow: NotifyAllowList = .none

    public init(store: AppStore, deployers: [String: any Deployer]) {
        self.store = store
        self.deployers = deployers
    }

    /// The backends `kiln scheduler` offers: `local` (Docker Engine API endpoints; an https
    /// one with the cell's client certificate from `secrets`) and `kubernetes` (API servers,
    /// each reached with the cell's credential from `secrets`). `secrets` is the scheduler's
    /// secret store; nil refuses every call to a Kubernetes or https cell. Both pull with
    /// `registryCredentials` (`kiln scheduler --registry-credentials`).
    public static func standardDeployers(
        secrets: (any PipelineSecrets)? = nil, registryCredentials: RegistryCredentials? = nil
    ) -> [String: any Deployer] {
        ["local": LocalDeployer(registryCredentials: registryCredentials, secrets: secrets),
         "kubernetes": KubernetesDeployer(secrets: secrets, registryCredentials: registryCredentials)]
    }

    func deployer(_ backend: String) throws -> any Deployer {
        guard let d = deployers[backend] else {
            throw KilnError.invalid("no '\(backend)' backend is configured in this scheduler; the backends here are \(deployers.keys.sorted().joined(separator: ", "))")
        }
        return d
    }

    /// Checks every instance of a version now, in parallel: discovery's answer to "which
    /// instances of this version can take traffic".
    public func checkInstances(app: String, version v: AppVersion, cells known: [Cell]? = nil) async -> [Instance] {
        let cells: [Cell]
        if let known { cells = known } else { cells = (try? await store.cells()) ?? [] }
        return await Self.checkInstances(app: app, version: v, cells: cells, deployers: deployers)
    }

    /// The same check with the cells and backends given (`kiln apps --check` has no etcd).
    public static func checkInstances(app: String, version v: AppVersion, cells: [Cell], deployers: [String: any Deployer]) async -> [Instance] {
        let spec = VersionSpec(app: app, v)
        return await withTaskGroup(of: (Int, Instance).self) { group in
            for (i, instance) in v.instances.enumerated() {
                group.addTask {
                    var checked = instance
                    checked.checkedAt = Date()
                    guard let cell = cells.first(where: { $0.name == instance.cell }) else {
                        checked.healthy = false
                        checked.detail = "cell \(instance.cell) no longer exists"
                        return (i, checked)
                    }
                    guard let deployer = deployers[cell.backend] else {
                        checked.healthy = false
                        checked.detail = "no \(cell.backend) backend here"
                        return (i, checked)
                    }
                    let (healthy, detail) = await deployer.check(instance, of: spec, in: cell)
                    checked.healthy = healthy
                    checked.detail = detail
                    return (i, checked)
                }
            }
            var out = v.instances
            for await (i, checked) in group { out[i] = checked }
            return out
        }
    }

    /// The deploy, lb, retire and notify plugins.
    public var plugins: [any PostBuildPlugin] {
        [DeployPlugin(env: self), LBPlugin(env: self), RetirePlugin(env: self), NotifyPlugin(allow: notifyAllow)]
    }
}
