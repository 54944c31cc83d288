import KilnCore
import Testing

/// The farm's etcd users and their grants, as data.
@Suite("etcd access")
struct EtcdAccessTests {
    @Test func anAgentHoldsItsOwnKeysAndTheBuildsOnly() {
        let grants = EtcdAccess.agent("agent-1").grants()
        #expect(grants == [
            .init(.readWrite, "/kiln/agents/agent-1", prefix: false),
            .init(.readWrite, "/kiln/tasks/agent-1/", prefix: true),
            .init(.readWrite, "/kiln/builds/", prefix: true),
            .init(.write, "/kiln/logs/", prefix: true),
            .init(.write, "/kiln/index/pipelines/", prefix: true),
            .init(.readWrite, "/kiln/index/reuse/", prefix: true),
        ])
        // Nothing that lets it steer the farm: no projects, queue, leader, cells, apps, /slb/,
        // nor the indexes webhooks and listings trust (builds by project, projects by repository).
        for key in ["/kiln/projects/p", "/kiln/queue/b", "/kiln/leader", "/kiln/cells/c", "/kiln/apps/a", "/slb/g/domains/d",
                    "/kiln/tasks/agent-2/b", "/kiln/tasks/agent-10/b", "/kiln/agents/agent-2", "/kiln/agents/agent-10", "/kiln/hooks/h", "/kiln/machines/m", "/kiln/grants/agent-1/b",
                    "/kiln/index/builds/p/b", "/kiln/index/repos/u/p", "/kiln/index/schema"] {
            #expect(!grants.contains { Self.covers($0, key) }, "\(key)")
        }
        #expect(grants.contains { Self.covers($0, "/kiln/tasks/agent-1/b") })
        #expect(!grants.contains { Self.covers($0, "/kiln/index/pipelines/b") && $0.access != .write }, "it never reads the index")
    }

    static func covers(_ grant: EtcdAccess.Grant, _ key: String) -> Bool {
        grant.prefix ? key.hasPrefix(grant.key) : key == grant.key
    }

    @Test func anAgentsTasksPrefixDoesNotCoverAnotherWhoseIdStartsTheSame() {
        let tasks = EtcdAccess.agent("agent-1").grants().first { $0.key.contains("/tasks/") }!
        #expect(tasks.key == "/kiln/tasks/agent-1/", "the trailing slash keeps agent-10's tasks out")
        let registration = EtcdAccess.agent("agent-1").grants().first { $0.key.contains("/agents/") }!
        #expect(!registration.prefix, "one key, so agent-10's registration is out")
    }

    @Test func anLBAgentReadsItsGroupAndWritesItsReport() {
        #expect(EtcdAccess.lbAgent(group: "local", id: "lb-1").grants() == [
            .init(.read, "/slb/local/domains/", prefix: true),
            .init(.readWrite, "/slb/local/agents/lb-1", prefix: false),
        ])
    }

    @Test func theSchedulerReadsAgentsAndWritesTheRest() {
        let grants = EtcdAccess.scheduler.grants(keys: Keys(prefix: "/farm"), slb: SLBKeys(root: "/lb"))
        #expect(grants.first == .init(.read, "/farm/agents/", prefix: true), "it never writes a registration")
        #expect(grants.contains(.init(.readWrite, "/farm/leader", prefix: false)))
        #expect(grants.contains(.init(.readWrite, "/lb/", prefix: true)))
        #expect(grants.allSatisfy { $0.key.hasPrefix("/farm/") || $0.key == "/lb/" }, "nothing outside its prefixes")
        #expect(!grants.contains { $0.key == "/farm/" }, "not the whole prefix")
    }

    @Test func onlyTheSchedulerTouchesTheSealedSecrets() {
        let keys = Keys()
        let secrets = [keys.secretsCheck, keys.secret(.project("p"), env: "TOKEN"), keys.gitCredential(project: "p"),
                       keys.webhookSecret(project: "p"), keys.secret(.group("g"), registry: "r.example.com"), keys.cellCredential("k1")]
        let scheduler = EtcdAccess.scheduler.grants()
        #expect(scheduler.contains(.init(.readWrite, "/kiln/secrets/", prefix: true)))
        for key in secrets { #expect(scheduler.contains { Self.covers($0, key) && $0.access == .readWrite }, "\(key)") }
        for component: EtcdAccess in [.agent("agent-1"), .agent("secrets"), .lbAgent(group: "local", id: "lb-1"), .lbAgent(group: "kiln", id: "secrets")] {
            for grant in component.grants() {
                #expect(!secrets.contains { Self.covers(grant, $0) }, "\(component) may touch a secret through \(grant)")
                #expect(!grant.key.hasPrefix("/kiln/secrets") && !"/kiln/secrets/".hasPrefix(grant.key), "\(component): \(grant)")
            }
        }
    }

    @Test func usersAndFilesAreDistinctPerComponent() {
        let all: [EtcdAccess] = [.scheduler, .agent("a"), .agent("a.b"), .lbAgent(group: "a", id: "b"), .lbAgent(group: "a-b", id: "c"), .lbAgent(group: "a", id: "b-c")]
        #expect(Set(all.map(\.user)).count == all.count)
        #expect(Set(all.map(\.credentialFileName)).count == all.count)
        #expect(EtcdAccess.scheduler.user == "kiln-scheduler")
        #expect(EtcdAccess.agent("agent-1").credentialFileName == "etcd-agent.agent-1")
        #expect(EtcdAccess.lbAgent(group: "local", id: "lb-1").user == "kiln-lb.local.lb-1")
        #expect(!all.contains { $0.user.contains(":") }, "a user:password file splits at the first ':'")
    }

    @Test func namesAreValidated() {
        #expect(throws: Never.self) { try EtcdAccess.lbAgent(group: "local", id: "lb-1").validate() }
        for bad: EtcdAccess in [.agent(""), .agent("../x"), .agent("a/b"), .lbAgent(group: "Local", id: "lb-1"), .lbAgent(group: "a.b", id: "c"), .lbAgent(group: "a", id: "b/c")] {
            #expect(throws: KilnError.self, "\(bad)") { try bad.validate() }
        }
    }
}
