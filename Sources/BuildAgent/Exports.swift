@_exported import DockerAPI
