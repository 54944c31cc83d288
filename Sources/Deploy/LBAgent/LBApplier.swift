import Etcd
import Foundation
import KilnCore
import Logging

/// Turns a view of `/slb/{group}/domains/` into what nginx serves: checks and renders each
/// domain, tests the candidate files with `nginx -t`, swaps them into the live folder and
/// reloads, or, when only servers of Lua-balanced domains changed, sets them through the
/// control socket without a reload. Owned by one task; it remembers what nginx serves (`live`).
struct Applier {
    let agent: LBAgent
    let nginx: Nginx
    let nginxPath: String
    let config: NginxConfig
    /// The Lua module's control endpoint; nil: every change reloads.
    let control: ServerControl?

    /// Domain → the file nginx serves now (the last good config of each domain).
    private var live: [String: String]
    /// Domain → a file nginx refused and its message, so an unchanged refused value is not
    /// tested again at every apply.
    private var refusedByNginx: [String: (file: String, message: String)] = [:]
    /// The last report's rejections, so each is logged once.
    private var rejected: [String: String] = [:]

    /// `live`: the files nginx started with.
    init(agent: LBAgent, nginx: Nginx, nginxPath: String, config: NginxConfig, control: ServerControl?, live: [String: String]) {
        self.agent = agent
        self.config = config
        self.control = control
        self.live = live
        self.nginx = nginx
        self.nginxPath = nginxPath
    }

    var logger: Logger { agent.logger }

    /// Makes nginx serve `view` as far as each domain allows, and says what it did.
    mutating func apply(_ view: PrefixView) async throws -> SLBAgentReport {
        let clock = ContinuousClock(), start = clock.now
        let prefix = agent.configuration.keys.domains(agent.configuration.group)
        var wanted: [String: String] = [:]
        var rejected: [String: String] = [:]
        for kv in view.kvs.values {
            let domain = String(kv.key.dropFirst(prefix.count))
            switch config.domainFile(domain: domain, value: kv.value, revision: kv.modRevision) {
            case .success(let file): wanted[domain] = file
            case .failure(let error): rejected[Validation.printable(domain)] = error.message
            }
        }
        // The last good config of every domain still in etcd (deleted domains are left out):
        // each change is tested over it, and a refused change leaves its domain as it is here.
        let base = live.filter { wanted[$0.key] != nil || rejected[$0.key] != nil }
        var changed = wanted.filter { live[$0.key] != $0.value }
        for (domain, file) in changed {
            if let refused = refusedByNginx[domain], refused.file == file {
                rejected[domain] = refused.message
                changed[domain] = nil
            }
        }
        var accepted = changed
        if !changed.isEmpty, let message = try await test(base.merging(changed) { _, new in new }) {
            // Something refused: find out which domains, each on its own over the last good set.
            accepted = [:]
            for (domain, file) in changed.sorted(by: { $0.key < $1.key }) {
                if let message = try await test(base.merging([domain: file]) { _, new in new }) {
                    rejected[domain] = message
                    refusedByNginx[domain] = (file, message)
                } else {
                    accepted[domain] = file
                }
            }
            if accepted.count == changed.count {
                // Each passes alone but not all together: keep them all out rather than guess.
                for domain in changed.keys { rejected[domain] = "refused together with the other changed domains: \(message)" }
                accepted = [:]
            } else if !accepted.isEmpty, let message = try await test(base.merging(accepted) { _, new in new }) {
                for domain in accepted.keys { rejected[domain] = "refused together with the other changed domains: \(message)" }
                accepted = [:]
            }
        }
        for domain in accepted.keys { refusedByNginx[domain] = nil }
        for domain in refusedByNginx.keys where wanted[domain] == nil { refusedByNginx[domain] = nil }

        let next = base.merging(accepted) { _, new in new }
        if next != live {
            // Written whether or not nginx reloads: a later reload or restart serves the same.
            try swapIn(next)
            let tested = clock.now - start
            let removed = live.keys.filter { next[$0] == nil }.sorted()
            if let control, let servers = Self.serversOnly(from: live, to: next), await set(servers, through: control) {
                logger.info("applied revision \(view.revision) without a reload (checked in \(Int(tested / .milliseconds(1))) ms, servers set in \(Int((clock.now - start - tested) / .milliseconds(1))) ms): servers of \(servers.keys.sorted()); rejected \(rejected.keys.sorted())")
            } else {
                try await nginx.reload()
                logger.info("applied revision \(view.revision) (checked in \(Int(tested / .milliseconds(1))) ms, reloaded in \(Int((clock.now - start - tested) / .milliseconds(1))) ms): \(next.count) domains; changed \(accepted.keys.sorted()), removed \(removed), rejected \(rejected.keys.sorted())")
                if let control {
                    // The dict outlives a reload: a removed domain's servers would stay in it.
                    for domain in removed {
                        do { try await control.remove(domain) } catch { logger.debug("could not remove the servers of \(domain) from the dict: \(error)") }
                    }
                }
            }
            live = next
        } else {
            logger.debug("revision \(view.revision): nothing to reload; rejected \(rejected.keys.sorted())")
        }
        for (domain, reason) in rejected.sorted(by: { $0.key < $1.key }) where self.rejected[domain] != reason {
            let kept = live[domain] != nil ? "it keeps its last good config" : "it is not served"
            logger.warning("domain \(domain) is refused, \(kept): \(reason)")
        }
        self.rejected = rejected
        return SLBAgentReport(id: agent.configuration.id, appliedRevision: view.revision, rejected: rejected, listen: agent.configuration.listen)
    }

    /// Domain → its new servers (`NginxLua.servers`) when `next` differs from `live` only in
    /// the servers of Lua-balanced domains; nil when nginx must reload (a domain added or
    /// removed, anything else of a file changed, a domain without the balancer).
    static func serversOnly(from live: [String: String], to next: [String: String]) -> [String: String]? {
        guard live.count == next.count else { return nil }
        var servers: [String: String] = [:]
        for (domain, file) in next where live[domain] != file {
            guard let old = live[domain].flatMap(NginxLua.split), let new = NginxLua.split(file), old.shape == new.shape else { return nil }
            servers[domain] = new.servers
        }
        return servers
    }

    /// Sets each domain's servers through the control endpoint and reads them back; false
    /// (logged) if one failed, and the caller reloads: the files already hold them all.
    private func set(_ servers: [String: String], through control: ServerControl) async -> Bool {
        for (domain, text) in servers.sorted(by: { $0.key < $1.key }) {
            do {
                try await control.set(domain, servers: text)
            } catch {
                logger.warning("could not set the servers of \(domain) through the Lua control socket (\(error)); reloading nginx instead")
                return false
            }
        }
        return true
    }

    /// `nginx -t` of the main file over `files` in the staging folder: nil if nginx accepts them, else its message.
    private func test(_ files: [String: String]) async throws -> String? {
        try agent.write(files, to: agent.stagingDomains)
        let message = try await Nginx.test(executable: nginxPath, directory: agent.dir, configFile: agent.stagingConfig)
        // Staging paths mean nothing to a reader of the report.
        return message.map { $0.replacingOccurrences(of: agent.stagingDomains.path + "/", with: "") }
    }

    /// Makes the live folder hold exactly `files` (each written whole, then renamed into place).
    private func swapIn(_ files: [String: String]) throws {
        try agent.write(files, to: agent.liveDomains, unchanged: live)
    }
}

extension LBAgent {
    /// Makes `folder` hold exactly `files`; skips files whose text is already `unchanged`'s.
    func write(_ files: [String: String], to folder: URL, unchanged: [String: String] = [:]) throws {
        let fm = FileManager.default
        let wantedNames = Set(files.keys.map(NginxConfig.fileName))
        for name in try fm.contentsOfDirectory(atPath: folder.path) where !wantedNames.contains(name) {
            try fm.removeItem(at: folder.appendingPathComponent(name))
        }
        for (domain, text) in files where unchanged[domain] != text {
            try text.write(to: folder.appendingPathComponent(NginxConfig.fileName(domain)), atomically: true, encoding: .utf8)
        }
    }
}
