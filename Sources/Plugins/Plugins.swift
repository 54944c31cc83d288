// Plugins module
