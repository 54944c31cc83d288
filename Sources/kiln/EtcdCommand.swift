import ArgumentParser
import Etcd
import Foundation

struct EtcdCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "etcd",
        abstract: "See etcd's size and alarms; defragment its members; disarm an alarm.",
        discussion: """
        Kiln keeps everything in etcd, and etcd refuses every write once a member's database \
        reaches its quota (the NOSPACE alarm): no build can then be queued, assigned or \
        finished. Every scheduler watches for it (kiln agents, /metrics); these commands are \
        what an operator does about it. See docs/etcd-operations.md.

        Give every member of the cluster: --etcd https://etcd-1:2379,https://etcd-2:2379,https://etcd-3:2379
        """,
        subcommands: [Status.self, Defrag.self, Alarm.self])

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Each member's database size against its quota, who leads, and the alarms.")
        @OptionGroup var etcd: EtcdOptions

        func run() async throws {
            let client = try etcd.client(logger: KilnLogging.bootstrap(etcd.logLevel ?? "warning"))
            for endpoint in client.endpoints {
                do {
                    let s = try await client.memberStatus(of: endpoint)
                    let quota = try? await client.quotaBytes(of: endpoint)
                    let share = quota.map { " of \(mib($0)) (\(Int(Double(s.dbSizeBytes) / Double($0) * 100)) %)" } ?? ""
                    say("\(endpoint)  \(s.isLeader ? "leader  " : "follower")  database \(mib(s.dbSizeBytes))\(share), in use \(mib(s.dbSizeInUseBytes)), revision \(s.revision), etcd \(s.version)")
                } catch let error as EtcdError {
                    say("\(endpoint)  DOES NOT ANSWER: \(error.message)")
                }
            }
            let alarms = try await client.alarms()
            say(alarms.isEmpty ? "no alarm" : "ALARMS: \(alarms.map(\.description).joined(separator: ", ")) (see kiln etcd alarm --help)")
        }
    }

    struct Defrag: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Give the free pages of each member's database back to the disk, one member at a time.",
            discussion: """
            Compaction frees space inside the database file; only defragmentation shrinks the \
            file, and etcd's quota counts the file. A member answers nothing while it is \
            defragmented (seconds per hundreds of megabytes), so this does one member at a \
            time, the followers first and the leader last, and refuses to start while any \
            member does not answer. Needs etcd's root user (--etcd-credentials with root:PASSWORD).
            """)
        @OptionGroup var etcd: EtcdOptions

        func run() async throws {
            let client = try etcd.client(logger: KilnLogging.bootstrap(etcd.logLevel ?? "warning"))
            var members: [(endpoint: String, status: EtcdMemberStatus?)] = []
            for endpoint in client.endpoints { members.append((endpoint, try? await client.memberStatus(of: endpoint))) }
            let order: [String]
            switch DefragmentationPlan.order(members) {
            case .success(let planned): order = planned
            case .failure(let refused): throw ValidationError(refused.reason)
            }
            for endpoint in order {
                let before = members.first { $0.endpoint == endpoint }?.status?.dbSizeBytes ?? 0
                say("defragmenting \(endpoint) (\(mib(before)))…")
                let started = ContinuousClock.now
                try await client.defragment(member: endpoint)
                let after = try await client.memberStatus(of: endpoint)
                say("  \(mib(before)) → \(mib(after.dbSizeBytes)) in \(ContinuousClock.now - started)")
            }
        }
    }

    struct Alarm: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List etcd's alarms, or disarm them once there is room again.",
            discussion: """
            With NOSPACE raised etcd refuses every write but deletes. To recover: let \
            compaction run (or compact by hand: etcdctl compact REVISION), remove what Kiln \
            no longer needs (retention), run kiln etcd defrag, then kiln etcd alarm disarm.
            """,
            subcommands: [List.self, Disarm.self], defaultSubcommand: List.self)

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "The alarms raised, by member.")
            @OptionGroup var etcd: EtcdOptions

            func run() async throws {
                let alarms = try await etcd.client(logger: KilnLogging.bootstrap(etcd.logLevel ?? "warning")).alarms()
                say(alarms.isEmpty ? "no alarm" : alarms.map(\.description).joined(separator: "\n"))
            }
        }

        struct Disarm: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Disarm every alarm raised, after checking that each member is back under its quota.",
                discussion: "Disarming while a member is still at its quota is refused: the alarm would come back with the next write.")
            @OptionGroup var etcd: EtcdOptions

            func run() async throws {
                let client = try etcd.client(logger: KilnLogging.bootstrap(etcd.logLevel ?? "warning"))
                let alarms = try await client.alarms()
                guard !alarms.isEmpty else { say("no alarm to disarm"); return }
                for endpoint in client.endpoints {
                    guard let status = try? await client.memberStatus(of: endpoint), let quota = try? await client.quotaBytes(of: endpoint) else { continue }
                    if status.dbSizeBytes >= quota * 95 / 100 {
                        throw ValidationError("\(endpoint) still holds \(mib(status.dbSizeBytes)) of its \(mib(quota)) quota: the alarm would come back at once. Free space first (compaction, then kiln etcd defrag)")
                    }
                }
                for alarm in alarms {
                    try await client.disarm(alarm)
                    say("disarmed \(alarm)")
                }
            }
        }
    }
}

private func mib(_ bytes: Int64) -> String {
    String(format: "%.1f MiB", Double(bytes) / Double(1 << 20))
}
