import ArgumentParser
import BuildAgent
import Deploy
import KilnCore

// The settings the CLI takes as a word from a fixed list: ArgumentParser checks the word and,
// for a wrong one, answers with the choices. The raw values are the same as on the wire.

extension Supersede: ExpressibleByArgument {}
extension CompileNetwork: ExpressibleByArgument {}
extension LBServerUpdates: ExpressibleByArgument {}
extension MachineCredential.Kind: ExpressibleByArgument {}
