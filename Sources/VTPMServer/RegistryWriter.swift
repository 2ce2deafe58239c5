import Dispatch
import Logging
import Registry
import Synchronization
import VMIdentity
import _VTPMPosix

/// The registry writes vtpmd makes while the guest runs (a checkpoint handed out, "ran after", the state's
/// write generation, this host's registration), made on a thread of their own so that no TPM command waits
/// on the registry: a PostgreSQL that is slow, stopped or unreachable never stalls the guest's TPM.
///
/// Writes are applied in the order they were queued, one at a time. Every one is idempotent and only moves
/// the registry forward, so a write that fails because the registry is unavailable stays at the head of
/// the queue and is tried again (every second, then every five) until it succeeds: after an outage the
/// registry catches up with everything this process saw, in order. A write the registry refuses for another
/// reason (an unknown generation) is logged and dropped.
///
/// A decision reads the registry, so it first waits for the queue to drain (``flush(timeout:)``): a decision
/// never runs on facts older than what this process already knows.
final class RegistryWriter: Sendable {
    enum Write: Sendable, CustomStringConvertible {
        case checkpoint(VMID, generation: UInt64, number: UInt64)
        case markRan(VMID, generation: UInt64)
        case stateWrite(VMID, generation: UInt64, write: UInt64)
        case registerHost(id: String, name: String, publicKey: [UInt8])

        var description: String {
            switch self {
            case .checkpoint(let vm, let generation, let number):
                return "checkpoint \(number) of \(vm) generation \(generation)"
            case .markRan(let vm, let generation): return "ran-after mark of \(vm) generation \(generation)"
            case .stateWrite(let vm, let generation, let write):
                return "state write \(write) of \(vm) generation \(generation)"
            case .registerHost(let id, let name, _): return "registration of host \(id) (\(name))"
            }
        }
    }

    private struct State {
        var queue: [Write] = []
        /// The head of the queue is being applied.
        var busy = false
        var stopped = false
        /// The last failure, while the registry is unavailable (for the log and for callers).
        var failing: String? = nil
    }

    private let registry: any RegistryStore
    private let logger: Logger
    private let state = Mutex(State())
    private let wakeUp = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)

    init(registry: any RegistryStore, logger: Logger) {
        self.registry = registry
        self.logger = logger
        DispatchQueue(label: "vtpm.registry-writer").async { self.work() }
    }

    /// Queues a write; returns at once.
    func enqueue(_ write: Write) {
        self.state.withLock { $0.queue.append(write) }
        self.wakeUp.signal()
    }

    /// The number of writes not yet in the registry.
    var pending: Int { self.state.withLock { $0.queue.count } }

    /// Why the registry refused the last attempt, while writes wait for it.
    var failure: String? { self.state.withLock { $0.failing } }

    /// Waits until every queued write is in the registry, at most `timeout`.
    /// - Returns: Whether the queue drained.
    func flush(timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        self.wakeUp.signal()
        while true {
            let idle = self.state.withLock { $0.queue.isEmpty && !$0.busy }
            if idle { return true }
            if ContinuousClock.now >= deadline { return false }
            sleepBriefly(milliseconds: 2)
        }
    }

    /// Stops the thread after one last try of what is queued (at most `timeout`); logs what could not be
    /// written.
    func stop(timeout: Duration) {
        _ = self.flush(timeout: timeout)
        let lost = self.state.withLock { state in
            state.stopped = true
            return state.queue
        }
        self.wakeUp.signal()
        _ = self.finished.wait(timeout: .now() + .seconds(1))
        for write in lost {
            self.logger.error("registry: unavailable at exit, not recorded: \(write)")
        }
    }

    private func work() {
        var delay = 0
        while true {
            if delay > 0 {
                _ = self.wakeUp.wait(timeout: .now() + .milliseconds(delay))
            } else {
                self.wakeUp.wait()
            }
            while true {
                let next: Write? = self.state.withLock { state in
                    guard !state.stopped, let head = state.queue.first else { return nil }
                    state.busy = true
                    return head
                }
                guard let next else { break }
                let outcome = self.apply(next)
                let recovered: String? = self.state.withLock { state in
                    state.busy = false
                    let was = state.failing
                    switch outcome {
                    case .done, .dropped:
                        state.queue.removeFirst()
                        state.failing = nil
                        return was
                    case .retry(let reason):
                        state.failing = reason
                        return nil
                    }
                }
                if let recovered {
                    self.logger.notice("registry: available again, catching up", metadata: ["was": "\(recovered)"])
                }
                if case .retry = outcome {
                    delay = delay == 0 ? 1000 : 5000
                    break
                }
                delay = 0
            }
            if self.state.withLock({ $0.stopped }) {
                self.finished.signal()
                return
            }
        }
    }

    private enum Outcome {
        case done, dropped
        case retry(String)
    }

    private func apply(_ write: Write) -> Outcome {
        do {
            switch write {
            case .checkpoint(let vm, let generation, let number):
                try self.registry.recordCheckpoint(vmID: vm, generation: generation, number: number)
            case .markRan(let vm, let generation):
                try self.registry.markRan(vmID: vm, generation: generation)
            case .stateWrite(let vm, let generation, let write):
                try self.registry.recordStateWrite(vmID: vm, generation: generation, write: write)
            case .registerHost(let id, let name, let key):
                let record = try self.registry.registerHost(id: id, name: name, publicKey: key)
                if record.isRevoked {
                    self.logger.error(
                        "registry: this host (\(id)) is revoked: other hosts refuse its state blobs",
                        metadata: ["reason": "\(record.revokedReason ?? "")"]
                    )
                }
            }
            return .done
        } catch let error as RegistryError where error.code == .unavailable {
            let reason = error.description
            if self.failure == nil {
                self.logger.error("registry: \(write) waits, the registry is unavailable: \(reason)")
            }
            return .retry(reason)
        } catch {
            self.logger.error("registry: cannot record \(write): \(error)")
            return .dropped
        }
    }
}

/// Sleeps the calling thread.
private func sleepBriefly(milliseconds: Int) {
    _ = DispatchSemaphore(value: 0).wait(timeout: .now() + .milliseconds(milliseconds))
}
