// Deploy module
