// Deploy module: the post-build plugins that deploy (`Plugins/`: deploy, lb, retire, notify,
// and the discovery monitor), the `Deployer` backends (`Backends/`: local containers through
// the Docker Engine API, Kubernetes), the app records (`AppStore`) and the nginx lb-agent
// (`LBAgent/`).
