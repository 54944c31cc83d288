import Foundation

// The subset of the Kubernetes API's objects `KubernetesDeployer` writes and reads, in their
// wire shapes (core/v1 Namespace, Service, Secret, Pod, Status, DeleteOptions; apps/v1 Deployment).
// Fields Kiln never sets are left out; fields it reads are optional, since the API server
// leaves out empty ones (a pending pod has no `podIP`, a fresh one no `conditions`).

/// `metadata` of any object.
struct KubernetesObjectMeta: Codable, Sendable, Equatable {
    var name: String?
    var namespace: String?
    var labels: [String: String]?
    var deletionTimestamp: String?

    init(name: String? = nil, namespace: String? = nil, labels: [String: String]? = nil) {
        self.name = name
        self.namespace = namespace
        self.labels = labels
    }
}

struct KubernetesNamespace: Codable, Sendable {
    var apiVersion = "v1"
    var kind = "Namespace"
    var metadata: KubernetesObjectMeta
}

/// An environment variable: a value, or a reference to a key of a Secret (`valueFrom`).
struct KubernetesEnvVar: Codable, Sendable, Equatable {
    struct Source: Codable, Sendable, Equatable {
        struct SecretKey: Codable, Sendable, Equatable {
            var name: String
            var key: String
        }
        var secretKeyRef: SecretKey
    }
    var name: String
    var value: String?
    var valueFrom: Source?

    init(name: String, value: String) {
        self.name = name
        self.value = value
    }

    init(name: String, valueFrom: Source) {
        self.name = name
        self.valueFrom = valueFrom
    }
}

struct KubernetesContainerPort: Codable, Sendable, Equatable {
    var name: String?
    var containerPort: Int
    var `protocol`: String?
}

struct KubernetesResources: Codable, Sendable, Equatable {
    var requests: [String: String]?
    var limits: [String: String]?
}

struct KubernetesProbe: Codable, Sendable, Equatable {
    struct HTTPGet: Codable, Sendable, Equatable {
        var path: String
        var port: Int
        var scheme: String?
    }
    var httpGet: HTTPGet?
    var initialDelaySeconds: Int?
    var periodSeconds: Int?
    var timeoutSeconds: Int?
    var successThreshold: Int?
    var failureThreshold: Int?
}

struct KubernetesContainer: Codable, Sendable, Equatable {
    var name: String
    var image: String?
    var ports: [KubernetesContainerPort]?
    var env: [KubernetesEnvVar]?
    var resources: KubernetesResources?
    var readinessProbe: KubernetesProbe?
}

struct KubernetesPodSpec: Codable, Sendable, Equatable {
    var containers: [KubernetesContainer]
    /// Secrets of type `kubernetes.io/dockerconfigjson` the kubelet pulls the image with.
    var imagePullSecrets: [KubernetesLocalObjectReference]?
}

struct KubernetesLocalObjectReference: Codable, Sendable, Equatable {
    var name: String
}

/// core/v1 Secret; `data` values are base64.
struct KubernetesSecret: Codable, Sendable {
    var apiVersion = "v1"
    var kind = "Secret"
    var metadata: KubernetesObjectMeta
    var type: String
    var data: [String: String]
}

struct KubernetesPodTemplate: Codable, Sendable, Equatable {
    var metadata: KubernetesObjectMeta
    var spec: KubernetesPodSpec
}

struct KubernetesLabelSelector: Codable, Sendable, Equatable {
    var matchLabels: [String: String]
}

struct KubernetesDeployment: Codable, Sendable {
    struct Spec: Codable, Sendable, Equatable {
        var replicas: Int?
        var selector: KubernetesLabelSelector
        var template: KubernetesPodTemplate
    }
    var apiVersion = "apps/v1"
    var kind = "Deployment"
    var metadata: KubernetesObjectMeta
    var spec: Spec
}

struct KubernetesService: Codable, Sendable {
    struct Port: Codable, Sendable, Equatable {
        var name: String?
        var port: Int
        var targetPort: Int?
        var `protocol`: String?
    }
    struct Spec: Codable, Sendable, Equatable {
        var selector: [String: String]
        var ports: [Port]
    }
    var apiVersion = "v1"
    var kind = "Service"
    var metadata: KubernetesObjectMeta
    var spec: Spec
}

/// `DeleteOptions`: sent as the body of a DELETE.
struct KubernetesDeleteOptions: Codable, Sendable {
    var apiVersion = "v1"
    var kind = "DeleteOptions"
    var propagationPolicy: String
}

/// A pod as Kiln reads it: only what says where it is and whether it is ready.
struct KubernetesPod: Codable, Sendable {
    struct Condition: Codable, Sendable {
        var type: String
        var status: String
        var reason: String?
        var message: String?
    }
    struct ContainerState: Codable, Sendable {
        struct Detail: Codable, Sendable {
            var reason: String?
            var message: String?
            var exitCode: Int?
        }
        var waiting: Detail?
        var running: [String: String]?
        var terminated: Detail?
    }
    struct ContainerStatus: Codable, Sendable {
        var name: String
        var ready: Bool?
        var restartCount: Int?
        var state: ContainerState?
        var lastState: ContainerState?
    }
    struct Status: Codable, Sendable {
        var phase: String?
        var podIP: String?
        var reason: String?
        var message: String?
        var conditions: [Condition]?
        var containerStatuses: [ContainerStatus]?
    }
    struct Spec: Codable, Sendable {
        struct Container: Codable, Sendable {
            var name: String
            var ports: [KubernetesContainerPort]?
        }
        var containers: [Container]?
    }
    var metadata: KubernetesObjectMeta
    var spec: Spec?
    var status: Status?

    var name: String { metadata.name ?? "" }
    var isTerminating: Bool { metadata.deletionTimestamp != nil }
    func condition(_ type: String) -> Condition? { status?.conditions?.first { $0.type == type } }
    var isReady: Bool { condition("Ready")?.status == "True" }
}

struct KubernetesPodList: Codable, Sendable {
    var items: [KubernetesPod]
}

/// The API server's answer to a failed request (and to some deletes):
/// `{"kind":"Status","status":"Failure","message":…,"reason":"NotFound","code":404}`.
struct KubernetesStatus: Codable, Sendable {
    var kind: String?
    var status: String?
    var message: String?
    var reason: String?
    var code: Int?
}
