// Deploy module: deploy, discovery and LB plugins (`DeployPlugins.swift`), the `Deployer`
// backends (`LocalDeployer`, `KubernetesDeployer`) and the nginx lb-agent (`LBAgent`).
