import Foundation
import KilnCore

/// One secret as etcd holds it under `/kiln/secrets/`: the value sealed by the farm's key
/// (bound to the etcd key it is stored under) and metadata that is not secret.
///
/// Rule: nothing secret goes outside `sealed`. `detail` is for people (a git credential's
/// kind, a registry login's user name), and the API shows it.
public struct StoredSecret: Codable, Sendable, Equatable {
    public var sealed: SealedValue
    /// A build secret for protected refs only (`Project.isProtected(ref:)`).
    public var protectedOnly: Bool?
    /// A build secret given as the file `/run/secrets/NAME` instead of an environment variable.
    public var file: Bool?
    public var detail: String?
    public var updatedAt: Date
    public var updatedBy: String?

    public init(sealed: SealedValue, protectedOnly: Bool? = nil, file: Bool? = nil, detail: String? = nil, updatedAt: Date = Date(), updatedBy: String? = nil) {
        self.sealed = sealed
        self.protectedOnly = protectedOnly
        self.file = file
        self.detail = detail
        self.updatedAt = updatedAt
        self.updatedBy = updatedBy
    }
}

/// What an etcd key under `/kiln/secrets/` holds, read from the key alone (`Keys.secret…`).
public enum SecretSlot: Sendable, Equatable {
    /// A build secret `NAME` of a project or group.
    case env(SecretScope, name: String)
    /// A login to the registry `host` of a project or group.
    case registry(SecretScope, host: String)
    /// A project's git credential.
    case git(project: String)
    /// A project's GitLab webhook token.
    case webhook(project: String)
    /// A Kubernetes cell's credential.
    case cell(String)
    /// The value sealed at the first start, so a wrong key file shows before any secret exists.
    case check

    /// The slot of `key`, or nil for a key the schema does not have.
    public static func of(_ key: String, keys: Keys) -> SecretSlot? {
        guard let rest = Keys.name(of: key, under: keys.secrets) else { return nil }
        let parts = rest.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        switch parts.count {
        case 1 where parts[0] == "check": return .check
        case 2 where parts[0] == "cells": return .cell(parts[1])
        case 3 where parts[0] == "projects" && parts[2] == "git": return .git(project: parts[1])
        case 3 where parts[0] == "projects" && parts[2] == "webhook": return .webhook(project: parts[1])
        case 4 where parts[0] == "projects" || parts[0] == "groups":
            let scope: SecretScope = parts[0] == "projects" ? .project(parts[1]) : .group(parts[1])
            switch parts[2] {
            case "env": return .env(scope, name: parts[3])
            case "registry": return .registry(scope, host: parts[3])
            default: return nil
            }
        default: return nil
        }
    }

    /// `SecretInfo.kind`: env, registry, git, webhook, cell or check.
    public var kind: String {
        switch self {
        case .env: "env"
        case .registry: "registry"
        case .git: "git"
        case .webhook: "webhook"
        case .cell: "cell"
        case .check: "check"
        }
    }

    /// What `SecretInfo.name` says: the secret's name, the registry's host, `git` or `webhook`.
    public var name: String {
        switch self {
        case .env(_, let name): name
        case .registry(_, let host): host
        case .git: "git"
        case .webhook: "webhook"
        case .cell(let cell): cell
        case .check: "check"
        }
    }

    /// The project or group it belongs to; nil for cells and the check.
    public var scope: SecretScope? {
        switch self {
        case .env(let scope, _), .registry(let scope, _): scope
        case .git(let p), .webhook(let p): .project(p)
        case .cell, .check: nil
        }
    }
}
